"""The model repository on disk: which models and versions exist, and their load state.

Layout: ``<root>/<model>/config.json``, ``<root>/<model>/<version>/model.pt``,
optional custom-operator libraries ``<root>/<model>/*.so`` and
``<root>/<model>/<version>/lib/*.so``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptserve.errors import ApiError
from ptserve.modelconfig import ConfigError, ModelConfig, load_config


class State(str, enum.Enum):
    """Load state of one model version."""

    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ModelVersion:
    """One ``<model>/<version>`` directory and what loading it gave."""

    model: str
    version: int
    path: Path
    libraries: tuple[Path, ...]
    state: State = State.LOADING
    reason: str = ""
    module: Any = None

    @property
    def model_file(self) -> Path:
        """The TorchScript file of this version."""
        return self.path / "model.pt"

    def set_ready(self, module: Any) -> None:
        self.module = module
        self.state = State.READY
        self.reason = ""

    def set_unavailable(self, reason: str) -> None:
        self.module = None
        self.state = State.UNAVAILABLE
        self.reason = reason


@dataclass
class Model:
    """A model directory: its config and versions (``error`` set if unusable)."""

    name: str
    config: ModelConfig | None
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    error: str = ""

    @property
    def default_version(self) -> ModelVersion | None:
        """The highest numeric version, or None if there is none."""
        return self.versions[max(self.versions)] if self.versions else None

    def version(self, version: str | None) -> ModelVersion:
        """The requested version (default if None); 404 if unknown, 503 if none exists."""
        if version is None:
            found = self.default_version
            if found is None:
                raise ApiError(503, f"model '{self.name}' is not ready: {self.error}")
            return found
        number = int(version) if _is_number(version) else None
        if number not in self.versions:
            known = ", ".join(str(v) for v in sorted(self.versions)) or "none"
            raise ApiError(
                404, f"model '{self.name}' has no version '{version}' (versions: {known})"
            )
        return self.versions[number]


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _libraries(directory: Path) -> tuple[Path, ...]:
    if not directory.is_dir():
        return ()
    return tuple(sorted(p for p in directory.glob("*.so") if p.is_file()))


def _scan_model(path: Path) -> Model:
    try:
        config, error = load_config(path / "config.json"), ""
    except ConfigError as exc:
        config, error = None, f"invalid config.json: {exc}"
    model = Model(name=path.name, config=config, error=error)
    shared = _libraries(path)
    for child in sorted(path.iterdir()):
        if child.is_dir() and _is_number(child.name):
            entry = ModelVersion(
                model=path.name,
                version=int(child.name),
                path=child,
                libraries=shared + _libraries(child / "lib"),
            )
            if error:
                entry.set_unavailable(error)
            model.versions[entry.version] = entry
    if not model.versions and not error:
        model.error = "no numeric version directory (for example 1/model.pt)"
    return model


@dataclass
class Repository:
    """All models found under ``root`` at start-up."""

    root: Path
    models: dict[str, Model] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def scan(cls, root: Path) -> Repository:
        """Find every model directory under ``root``; never raises for bad contents."""
        repo = cls(root=root)
        if not root.is_dir():
            repo.error = f"model repository {root} is not a directory"
            return repo
        try:
            paths = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError as exc:
            repo.error = f"cannot list model repository {root}: {exc.strerror or exc}"
            return repo
        for path in paths:
            if not path.name.startswith("."):
                try:
                    repo.models[path.name] = _scan_model(path)
                except OSError as exc:
                    reason = f"cannot read {path}: {exc.strerror or exc}"
                    repo.models[path.name] = Model(path.name, None, error=reason)
        if not repo.models:
            repo.error = f"model repository {root} holds no model directories"
        return repo

    def versions(self) -> list[ModelVersion]:
        """Every version of every model."""
        return [v for m in self.models.values() for v in m.versions.values()]

    def model(self, name: str) -> Model:
        """The named model; 404 if the repository has no such model."""
        found = self.models.get(name)
        if found is None:
            raise ApiError(404, f"unknown model '{name}'")
        return found

    def not_ready_reason(self) -> str:
        """Why the server is not ready, or "" when every model version is ready."""
        if self.error:
            return self.error
        for model in self.models.values():
            if model.error:
                return f"model '{model.name}': {model.error}"
        for v in self.versions():
            if v.state is State.LOADING:
                return "models are still loading"
        for v in self.versions():
            if v.state is State.UNAVAILABLE:
                return f"model '{v.model}' version {v.version}: {v.reason}"
        return ""

    def index(self) -> list[dict[str, str]]:
        """The ``/v2/repository/index`` answer: one entry per model version."""
        rows = []
        for model in self.models.values():
            if not model.versions:
                rows.append({"name": model.name, "state": "UNAVAILABLE", "reason": model.error})
            for v in model.versions.values():
                rows.append(
                    {"name": v.model, "version": str(v.version), "state": v.state.value,
                     "reason": v.reason}
                )
        return rows
