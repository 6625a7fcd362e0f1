"""One benchmark run's hold on the engine: the images it measures and everything it
creates (containers, throwaway images, scratch folders), which `cleanup` always removes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from pytorch_cuda.core import names
from pytorch_cuda.matrix import Cell
from pytorch_cuda.core.paths import ROOT
from pytorch_cuda.core.progress import say

from . import facts

BENCH_LABEL = names.label("bench")
INCONTAINER = Path(__file__).resolve().parent / "incontainer"
CHECKS = ROOT / "tests" / "incontainer"
MAKE_MODELS = ROOT / "tests" / "integration" / "make_models.py"
SCRIPT_ENV = {"PYTHONPATH": "/checks", "PYTHONDONTWRITEBYTECODE": "1"}


class BenchError(Exception):
    """A benchmark part cannot go on; the message is one sentence for people."""


class Session:
    """The cell under measurement and every container, image and folder made for it."""

    def __init__(self, client: docker.DockerClient, cell: Cell) -> None:
        self.client = client
        self.cell = cell
        self.dev = cell.image("dev")
        self.prod = cell.image("prod")
        self.base_ref = names.base_ref(cell)
        self.bench_repository = f"{cell.matrix.repository}-bench"
        self.notes: list[str] = []
        self._containers: list[Container] = []
        self._images: list[str] = []
        self._dirs: list[Path] = []
        self._model_repo: Path | None = None
        self._gpu: dict | None = None

    # --- what is measured -------------------------------------------------------

    def require_images(self) -> None:
        """Stop with one sentence when the default cell's images are not built."""
        missing = [i.ref() for i in (self.dev, self.prod) if not self.image_id(i.ref())]
        if missing:
            raise BenchError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                             "not built; run `make image` first")

    def image_id(self, ref: str) -> str | None:
        """The ID of a local image, or None."""
        try:
            return self.client.images.get(ref).id
        except docker.errors.ImageNotFound:
            return None

    def gpu_kwargs(self) -> dict:
        """Run arguments that give a container the GPUs, or {} when none is usable here."""
        if self._gpu is None:
            self._gpu = {}
            listed = facts.gpus()
            if listed:
                request = {"device_requests": [
                    docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]}
                try:
                    self.run(self.prod.ref(), ["true"], **request)
                    self._gpu = request
                except (BenchError, docker.errors.APIError) as exc:
                    self.notes.append(f"a GPU is listed by nvidia-smi but containers cannot use it "
                                      f"({str(exc).strip()[:120]}); everything ran on the CPU")
        return self._gpu

    # --- containers ---------------------------------------------------------------

    def start(self, image: str, command: Any = None, **kwargs: Any) -> Container:
        """Start a detached container, labelled and remembered for cleanup."""
        labels = {BENCH_LABEL: "1", **kwargs.pop("labels", {})}
        container = self.client.containers.run(image, command, detach=True, labels=labels, **kwargs)
        self._containers.append(container)
        return container

    def remove(self, container: Container) -> None:
        """Remove a container now (it is also forgotten by cleanup)."""
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            say(f"could not remove container {container.short_id}: {exc.explanation}")
            return
        if container in self._containers:
            self._containers.remove(container)

    def run(self, image: str, command: Any, timeout: float = 1800,
            **kwargs: Any) -> tuple[str, str]:
        """Run a command to completion in a fresh container; (stdout, stderr); raise on failure."""
        container = self.start(image, command, **kwargs)
        try:
            code = container.wait(timeout=timeout)["StatusCode"]
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
        finally:
            self.remove(container)
        if code != 0:
            tail = " | ".join(err.strip().splitlines()[-5:])
            raise BenchError(f"{command} in {image} exited {code}: {tail}")
        return out, err

    def run_json(self, image: str, command: list[str], **kwargs: Any) -> Any:
        """Run a script from bench/incontainer (mounted read-only) and parse its JSON output."""
        volumes = {str(INCONTAINER): {"bind": "/bench", "mode": "ro"},
                   str(CHECKS): {"bind": "/checks", "mode": "ro"}, **kwargs.pop("volumes", {})}
        out, err = self.run(image, command, volumes=volumes,
                            environment={**SCRIPT_ENV, **kwargs.pop("environment", {})}, **kwargs)
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            tail = " | ".join(err.strip().splitlines()[-5:])
            raise BenchError(f"{command} printed no JSON: {tail}") from None

    def model_repo(self) -> Path:
        """A model repository written once by the prod image's own torch (make_models.py)."""
        if self._model_repo is None:
            out = self.scratch("models")
            say(f"writing the test model repository with {self.prod.ref()}")
            self.run(self.prod.ref(), ["python", "/make_models.py", "/out"],
                     user=f"{os.getuid()}:{os.getgid()}", environment=SCRIPT_ENV,
                     volumes={str(MAKE_MODELS): {"bind": "/make_models.py", "mode": "ro"},
                              str(CHECKS): {"bind": "/checks", "mode": "ro"},
                              str(out): {"bind": "/out", "mode": "rw"}})
            self._model_repo = out
        return self._model_repo

    # --- images and folders -------------------------------------------------------

    def bench_tag(self, name: str) -> str:
        """A throwaway tag under the bench repository, removed by cleanup."""
        return f"{self.bench_repository}:{name}"

    def track_image(self, ref: str) -> None:
        """Remember an image (tag or ID) this run made; cleanup removes it."""
        if ref not in self._images:
            self._images.append(ref)

    def scratch(self, name: str) -> Path:
        """A scratch folder (readable by containers), removed by cleanup."""
        path = Path(tempfile.mkdtemp(prefix=f"pytorch-cuda-bench-{name}-"))
        path.chmod(0o755)
        self._dirs.append(path)
        return path

    def protected_ids(self) -> set[str]:
        """IDs of the project's tagged images (images, base, build cache...) and all their
        local parents: never removed."""
        project = self.cell.matrix.repository
        keep: set[str] = set()
        for image in self.client.images.list():
            repos = {tag.rsplit(":", 1)[0] for tag in image.tags}
            if not any(r.startswith(project) and r != self.bench_repository for r in repos) \
                    and image.id != self.image_id(self.base_ref):
                continue
            keep.add(image.id)
            for layer in image.history():
                if layer.get("Id", "").startswith("sha256:"):
                    keep.add(layer["Id"])
        return keep

    def discard(self, refs: list[str]) -> None:
        """Remove some of this run's images now (children before parents); keep the rest."""
        protected = self.protected_ids()
        pending = list(reversed(refs))
        while pending:
            left = []
            for ref in pending:
                image_id = self.image_id(ref)
                if image_id is None or (image_id in protected
                                        and not ref.startswith(self.bench_repository + ":")):
                    continue
                try:
                    self.client.images.remove(ref, noprune=True)
                except docker.errors.ImageNotFound:
                    continue
                except docker.errors.APIError:
                    left.append(ref)
            if len(left) == len(pending):
                say(f"kept {len(left)} image(s) still in use: {', '.join(r[:19] for r in left)}")
                break
            pending = left
        self._images = [r for r in self._images if r not in set(refs)]

    def cleanup(self) -> None:
        """Remove every container, throwaway image and scratch folder of this run."""
        for container in list(self._containers):
            self.remove(container)
        self.discard(list(self._images))
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()
        self._model_repo = None

    def remove_leftovers(self) -> None:
        """Remove what an interrupted earlier run left: labelled containers, bench tags."""
        for container in self.client.containers.list(all=True, filters={"label": BENCH_LABEL}):
            say(f"removing container {container.short_id} left by an earlier run")
            self.remove(container)
        for image in self.client.images.list(name=self.bench_repository):
            for tag in image.tags:
                if tag.startswith(self.bench_repository + ":"):
                    say(f"removing image tag {tag} left by an earlier run")
                    self.track_image(tag)
        self.discard(list(self._images))


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
