"""The classic builder's output stream: steps, stages, cache hits, layers, downloads, errors."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pytorch_cuda.core.names import WHEELHOUSE_URL

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)")
LAYER_RE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")
SUCCESS_RE = re.compile(r"^Successfully built ([0-9a-f]{12,64})$")
PY_DOWNLOAD_RE = re.compile(r"^\s*Downloading (?!" + re.escape(WHEELHOUSE_URL)
                            + r")\S+\.(?:whl|tar\.gz|zip)\b")
"""pip fetching a file from an index: it names the wheel or sdist (a URL only for a find-links
page, as the host's wheelhouse is). uv's "Downloading NAME (SIZE)" lines name no file: steps run
uv with --no-index, so its downloads come from the wheelhouse."""
APT_FETCH_RE = re.compile(r"^Get:\d+ ")
COLOR_RE = re.compile(r"\x1b\[[0-9;]*m")
"""The colour codes the engine wraps a step's stderr in."""
TAIL_LINES = 40


@dataclass
class BuildOutput:
    """What one build's output said, followed chunk by chunk (`client.api.build(decode=True)`).

    `on_step(step, total, stage, instruction)` is called at every step; `on_line(line)` for
    every other non-empty line (the build's own output).
    """

    on_step: Callable[[str, str, str, str], None] | None = None
    on_line: Callable[[str], None] | None = None
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    step: str = "starting"
    stage: str = "-"
    image_id: str | None = None
    error: str | None = None
    stage_images: dict[str, str] = field(default_factory=dict)
    steps: int = 0
    cached_steps: int = 0
    created: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    python_downloads: list[str] = field(default_factory=list)
    apt_fetches: int = 0
    _is_from: bool = False
    _cached: bool = False

    def follow(self, chunks: Iterable[dict]) -> BuildOutput:
        """Read chunks until the stream ends or reports an error."""
        for chunk in chunks:
            self.feed(chunk)
            if self.error:
                break
        return self

    def feed(self, chunk: dict) -> None:
        """Take one decoded chunk of the stream."""
        if "error" in chunk or "errorDetail" in chunk:
            self.error = chunk.get("error") or chunk["errorDetail"].get("message", "")
            return
        if isinstance(chunk.get("aux"), dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        for line in COLOR_RE.sub("", chunk.get("stream", "")).splitlines():
            self._line(line)

    def _line(self, line: str) -> None:
        if not line.strip():
            return
        self.tail.append(line)
        match = STEP_RE.match(line)
        if match:
            self._step(*match.groups())
            return
        if line.strip() == "---> Using cache":
            self._cached = True
            return
        layer = LAYER_RE.match(line)
        if layer:
            self._layer(layer.group(1))
            return
        if PY_DOWNLOAD_RE.match(line):
            self.python_downloads.append(line.strip()[:160])
        elif APT_FETCH_RE.match(line):
            self.apt_fetches += 1
        success = SUCCESS_RE.match(line)
        if success and not self.image_id:
            self.image_id = success.group(1)
        if self.on_line:
            self.on_line(line)

    def _step(self, number: str, total: str, instruction: str) -> None:
        self._is_from = instruction.upper().startswith("FROM ")
        self._cached = False
        if self._is_from:
            words = instruction.split()
            self.stage = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
        else:
            self.steps += 1
        self.step = f"step {number}/{total} [{self.stage}]"
        if self.on_step:
            self.on_step(number, total, self.stage, instruction)

    def _layer(self, layer_id: str) -> None:
        self.stage_images[self.stage] = layer_id
        if self._is_from:
            return
        if self._cached:
            self.cached_steps += 1
            self.reused.append(layer_id)
        else:
            self.created.append(layer_id)
