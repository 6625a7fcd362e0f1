"""The version matrix: `versions.yaml` validated and expanded into cells and images."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pytorch_cuda.core.errors import UserError
from pytorch_cuda.matrix import schema as s
from pytorch_cuda.matrix.yamlfile import load

VARIANTS = ("dev", "prod")
DIGEST_REF_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
CUDA_KEY_RE = re.compile(r"^cu(\d+)(\d)$")
URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[^\s]*)?$")
SNAPSHOT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")

_PKG = s.Str(re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_{}-]*(==[A-Za-z0-9.+!]+)?$"),
             "a package name, optionally with ==version")

_PKG_NAME = s.Str(re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$"), "a distribution name")
_GLOB = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.*?\[\]/+-]+$")

SCHEMA = s.Fields({
    "schema": s.Int(),
    "project": s.Fields({
        "name": s.NAME, "repository": s.NAME, "title": s.Str(), "description": s.Str(),
        "licenses": s.Str(), "user": s.Fields({"name": s.NAME, "uid": s.Int()}),
        "source": s.Str(URL_RE, "an http(s) URL of the source repository"),
    }),
    "archive": s.Fields({
        "snapshot": s.Str(SNAPSHOT_RE, "a UTC time such as 2026-11-28T00:00:00Z"),
    }),
    "torch": s.Fields({
        "version": s.VERSION, "series": s.VERSION,
        "python": s.Fields({"min": s.VERSION, "max": s.VERSION}),
        "cudnn": s.VERSION, "nccl": s.VERSION,
        "companions": s.MapOf(s.VERSION),
    }),
    "cuda": s.MapOf(s.Fields({
        "version": s.VERSION, "index": s.NAME, "min_driver": s.VERSION,
        "arch_list": s.Str(re.compile(r"^\d+\.\d+(\+PTX)?(;\d+\.\d+(\+PTX)?)*$"),
                           "a list such as 7.0;8.0;9.0"),
    })),
    "os": s.MapOf(s.Fields({
        "distro": s.NAME, "version": s.VERSION, "python": s.VERSION,
        "base": s.Fields({
            "bootstrap": s.Fields({"suite": s.NAME, "variant": s.NAME, "epoch": s.Int()}),
            "image": s.Str(DIGEST_REF_RE, "an image reference pinned by digest (name@sha256:...)"),
        }, optional=frozenset({"bootstrap", "image"})),
    })),
    "runtime": s.Fields({
        "apt": s.ListOf(_PKG), "pip": s.ListOf(_PKG, 1),
    }),
    "variants": s.MapOf(s.Fields({
        "description": s.Str(), "apt": s.ListOf(_PKG), "pip": s.ListOf(_PKG),
        "ports": s.ListOf(s.Int()),
        "leave_out": s.ListOf(s.Fields({
            "dist": _PKG_NAME, "path": s.Str(_GLOB, "a relative path or glob under site-packages"),
            "reason": s.Str(),
        }, optional=frozenset({"dist", "path"}))),
        "size_budget_gb": s.Num(),
    }, optional=frozenset({"leave_out"}))),
    "matrix": s.Fields({
        "cuda": s.ListOf(s.NAME, 1), "os": s.ListOf(s.NAME, 1),
        "default": s.Fields({"cuda": s.NAME, "os": s.NAME}),
    }),
    "tags": s.Fields({
        "full": s.Str(),
        "aliases": s.Fields({
            "every": s.ListOf(s.Str()), "default_os": s.ListOf(s.Str()),
            "default": s.ListOf(s.Str()),
        }),
        "suffix": s.Fields({v: s.Str() for v in VARIANTS}),
    }),
})


@dataclass(frozen=True)
class Cuda:
    """One CUDA flavor of the torch release."""

    name: str
    version: str
    index: str
    min_driver: str
    arch_list: str

    @property
    def major_minor(self) -> str:
        """The CUDA version torch reports, e.g. 12.8."""
        return ".".join(self.version.split(".")[:2])


@dataclass(frozen=True)
class OS:
    """One operating system and where its base image comes from."""

    name: str
    distro: str
    version: str
    python: str
    suite: str | None
    bootstrap_variant: str | None
    bootstrap_epoch: int | None
    base_image: str | None


@dataclass(frozen=True)
class Cell:
    """One torch x CUDA x OS combination; it yields one image per variant."""

    matrix: Matrix = field(repr=False, compare=False)
    cuda: Cuda
    os: OS

    @property
    def id(self) -> str:
        """The cell's name on the command line, e.g. cu128-bookworm."""
        return f"{self.cuda.name}-{self.os.name}"

    @property
    def is_default(self) -> bool:
        """Whether this is the matrix's default cell."""
        return self.id == self.matrix.default_cell_id

    @property
    def torch_requirement(self) -> str:
        """The torch pin for this cell's lock (a local version on named indexes)."""
        version = self.matrix.torch_version
        return f"torch=={version}" if self.cuda.index == "default" else (
            f"torch=={version}+{self.cuda.name}"
        )

    @property
    def torch_version_reported(self) -> str:
        """`torch.__version__` inside the image."""
        return f"{self.matrix.torch_version}+{self.cuda.name}"

    def image(self, variant: str) -> Image:
        """The image of `variant` in this cell."""
        return Image(self, variant)

    def images(self) -> list[Image]:
        """Both images of this cell."""
        return [self.image(v) for v in VARIANTS]


@dataclass(frozen=True)
class Image:
    """One image: a cell and a variant."""

    cell: Cell
    variant: str

    @property
    def name(self) -> str:
        """A short name for messages, e.g. cu128-bookworm/dev."""
        return f"{self.cell.id}/{self.variant}"

    def _fields(self) -> dict[str, str]:
        m = self.cell.matrix
        return {
            "torch": m.torch_version, "series": m.series, "cuda": self.cell.cuda.name,
            "cudnn": ".".join(m.cudnn.split(".")[:2]), "python": self.cell.os.python,
            "os": self.cell.os.name, "variant": self.variant,
            "suffix": m.raw["tags"]["suffix"][self.variant],
        }

    @property
    def full_tag(self) -> str:
        """The immutable tag naming every pin."""
        return self.cell.matrix.format_tag(self.cell.matrix.raw["tags"]["full"], self._fields())

    @property
    def aliases(self) -> list[str]:
        """Floating tags that point at this image."""
        m = self.cell.matrix
        rules = m.raw["tags"]["aliases"]
        patterns = list(rules["every"])
        if self.cell.os.name == m.default_os:
            patterns += rules["default_os"]
        if self.cell.is_default:
            patterns += rules["default"]
        return [m.format_tag(p, self._fields()) for p in patterns]

    @property
    def tags(self) -> list[str]:
        """Full tag first, then aliases."""
        return [self.full_tag, *self.aliases]

    def ref(self, tag: str | None = None) -> str:
        """`repository:tag` (the full tag by default)."""
        return f"{self.cell.matrix.repository}:{tag or self.full_tag}"


class Matrix:
    """The validated contents of versions.yaml."""

    def __init__(self, raw: dict[str, Any], source: str, lines: dict[str, int]) -> None:
        self.raw = raw
        self.source = source
        self._checker = s.Checker(source, lines)
        self._checker.check(raw, SCHEMA)
        if raw["schema"] != 1:
            raise self._checker.fail("schema", f"unsupported schema version {raw['schema']}")
        torch = raw["torch"]
        self.torch_version: str = torch["version"]
        self.series: str = torch["series"]
        self.cudnn: str = torch["cudnn"]
        self.nccl: str = torch["nccl"]
        self.companions: dict[str, str] = dict(torch["companions"])
        self.repository: str = raw["project"]["repository"]
        self.source_url: str = raw["project"]["source"]
        self.snapshot: datetime = self._snapshot(raw["archive"]["snapshot"])
        self.cudas = {k: Cuda(k, **v) for k, v in raw["cuda"].items()}
        self.oses = {k: _os(k, v) for k, v in raw["os"].items()}
        self.default_cuda: str = raw["matrix"]["default"]["cuda"]
        self.default_os: str = raw["matrix"]["default"]["os"]
        self.default_cell_id = f"{self.default_cuda}-{self.default_os}"
        self._validate()
        self.cells = [
            Cell(self, self.cudas[c], self.oses[o])
            for c in raw["matrix"]["cuda"] for o in raw["matrix"]["os"]
        ]
        self._validate_tags()

    def _validate(self) -> None:
        fail = self._checker.fail
        if not self.series or not self.torch_version.startswith(self.series + "."):
            raise fail("torch.series", f"{self.series} is not the series of {self.torch_version}")
        for name, cuda in self.cudas.items():
            match = CUDA_KEY_RE.match(name)
            expected = f"{match.group(1)}.{match.group(2)}" if match else None
            if expected != cuda.major_minor:
                raise fail(f"cuda.{name}.version",
                           f"CUDA {cuda.version} does not match the flavor name {name}")
        low, high = (_vt(self.raw["torch"]["python"][k]) for k in ("min", "max"))
        for name, os_ in self.oses.items():
            if not low <= _vt(os_.python) <= high:
                raise fail(f"os.{name}.python",
                           f"Python {os_.python} is outside torch {self.torch_version}'s range "
                           f"{self.raw['torch']['python']['min']}-{self.raw['torch']['python']['max']}")
            base = self.raw["os"][name]["base"]
            if len(base) != 1:
                raise fail(f"os.{name}.base", "must give exactly one of 'bootstrap' or 'image'")
        for group, items in [("runtime.pip", self.raw["runtime"]["pip"])] + [
                (f"variants.{v}.pip", spec["pip"]) for v, spec in self.raw["variants"].items()]:
            for i, item in enumerate(items):
                if "==" not in item and item != "torch" and item not in self.companions:
                    raise fail(f"{group}[{i}]", f"{item!r} must be pinned with ==version")
        for variant, spec in self.raw["variants"].items():
            if spec.get("leave_out") and variant != "prod":
                raise fail(f"variants.{variant}.leave_out",
                           "only prod leaves files out; dev keeps the whole environment")
            for i, rule in enumerate(spec.get("leave_out", [])):
                if ("dist" in rule) == ("path" in rule):
                    raise fail(f"variants.{variant}.leave_out[{i}]",
                               "must give exactly one of 'dist' or 'path'")
        if set(self.raw["variants"]) != set(VARIANTS):
            raise fail("variants", f"must define exactly the variants {', '.join(VARIANTS)}")
        for key, known, what in (("cuda", self.cudas, f"a CUDA flavor torch {self.torch_version} offers"),
                                 ("os", self.oses, "an operating system defined under os")):
            for i, name in enumerate(self.raw["matrix"][key]):
                if name not in known:
                    raise fail(f"matrix.{key}[{i}]",
                               f"{name!r} is not {what} ({', '.join(known)})")
            if len(set(self.raw["matrix"][key])) != len(self.raw["matrix"][key]):
                raise fail(f"matrix.{key}", "lists a name twice")
        if self.default_cuda not in self.raw["matrix"]["cuda"] or (
            self.default_os not in self.raw["matrix"]["os"]
        ):
            raise fail("matrix.default",
                       f"{self.default_cell_id} names no cell of the matrix")

    def _snapshot(self, text: str) -> datetime:
        """The archive's snapshot time: a real moment, not in the future."""
        try:
            moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise self._checker.fail("archive.snapshot", f"{text!r} is not a valid time") from None
        if moment > datetime.now(timezone.utc):
            raise self._checker.fail("archive.snapshot", f"{text} is in the future")
        return moment

    def _validate_tags(self) -> None:
        seen: dict[str, str] = {}
        for image in self.images():
            for tag in image.tags:
                if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", tag):
                    raise self._checker.fail("tags", f"{tag!r} ({image.name}) is not a valid tag")
                if tag in seen:
                    raise self._checker.fail(
                        "tags", f"tag {tag!r} is given to both {seen[tag]} and {image.name}")
                seen[tag] = image.name

    def format_tag(self, pattern: str, fields: dict[str, str]) -> str:
        """Fill a tag pattern, naming an unknown field as bad input."""
        try:
            return pattern.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise self._checker.fail("tags", f"pattern {pattern!r} uses an unknown field {exc}") from None

    @property
    def default_cell(self) -> Cell:
        """The default cell (what `make image` builds)."""
        return self.cell(self.default_cell_id)

    def cell(self, cell_id: str) -> Cell:
        """Look up a cell by id, naming the known ones on a miss."""
        for cell in self.cells:
            if cell.id == cell_id:
                return cell
        known = ", ".join(c.id for c in self.cells)
        raise UserError(f"unknown cell {cell_id!r}: {self.source} defines {known}")

    def select(self, cell_ids: list[str] | None) -> list[Cell]:
        """The named cells (all of them when none are named)."""
        return [self.cell(c) for c in cell_ids] if cell_ids else list(self.cells)

    def images(self, cells: list[Cell] | None = None, variant: str | None = None) -> list[Image]:
        """Every image of `cells` (all cells by default), optionally of one variant."""
        return [i for c in (cells or self.cells) for i in c.images()
                if variant is None or i.variant == variant]

    def leave_out(self) -> list[dict[str, str]]:
        """What prod leaves out of the shared Python environment (dev adds it back), with reasons."""
        return list(self.raw["variants"]["prod"].get("leave_out", []))

    def size_budget(self, variant: str) -> int:
        """A variant's size budget in bytes (decimal GB, as the engine reports sizes)."""
        return int(self.raw["variants"][variant]["size_budget_gb"] * 1_000_000_000)

    def apt_packages(self, os_: OS, group: str) -> list[str]:
        """Apt package names of a group ('runtime' or a variant) for an OS."""
        items = (self.raw["runtime"]["apt"] if group == "runtime"
                 else self.raw["variants"][group]["apt"])
        return [p.replace("{python}", os_.python) for p in items]

    def pip_requirements(self, cell: Cell, group: str) -> list[str]:
        """Top-level pip requirements of a group ('runtime' or a variant) for a cell."""
        items = self.raw["runtime"]["pip"] if group == "runtime" else self.raw["variants"][group]["pip"]
        out = []
        for item in items:
            if item == "torch":
                out.append(cell.torch_requirement)
            elif item in self.companions:
                local = "" if cell.cuda.index == "default" or item == "triton" else f"+{cell.cuda.name}"
                out.append(f"{item}=={self.companions[item]}{local}")
            else:
                out.append(item)
        return out

    def to_json(self) -> list[dict[str, Any]]:
        """The cells as CI consumes them."""
        return [{
            "cell": c.id, "cuda": c.cuda.name, "cuda_version": c.cuda.version,
            "os": c.os.name, "python": c.os.python, "torch": self.torch_version,
            "default": c.is_default, "index": c.cuda.index,
            "images": {i.variant: {"tag": i.full_tag, "aliases": i.aliases} for i in c.images()},
        } for c in self.cells]

    def json(self) -> str:
        """`to_json` serialized."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def _os(name: str, raw: dict[str, Any]) -> OS:
    boot = raw["base"].get("bootstrap") or {}
    return OS(name, raw["distro"], raw["version"], raw["python"],
              boot.get("suite"), boot.get("variant"), boot.get("epoch"), raw["base"].get("image"))


def _vt(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def load_matrix(path: Path) -> Matrix:
    """Load and validate versions.yaml."""
    raw, lines = load(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path.name}: the top level must be a mapping")
    return Matrix(raw, path.name, lines)
