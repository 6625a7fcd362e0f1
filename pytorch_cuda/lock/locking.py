"""`build.py lock`: hash-locked Python environments per cell and apt pins per OS."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import ROOT, LOCKS, TOOLS_LOCK
from pytorch_cuda.lock import debian, indexes
from pytorch_cuda.matrix import OS, VARIANTS, Cell, Matrix

PLATFORM = "x86_64-manylinux_2_28"
GROUPS = ("runtime", *VARIANTS)


def pip_lock_path(cell: Cell, group: str) -> Path:
    """Where a cell's lock of a group ('runtime', 'dev', 'prod') lives."""
    return LOCKS / cell.id / f"{group}.txt"


def apt_lock_path(os_: OS) -> Path:
    """Where an OS's apt pins live."""
    return LOCKS / os_.name / "apt.txt"


def is_locked(cell: Cell) -> bool:
    """Whether every pip lock of the cell exists."""
    return all(pip_lock_path(cell, g).exists() for g in GROUPS)


def require_locked(cell: Cell) -> None:
    """Stop with a clear sentence when a cell cannot be built for want of a lock."""
    if is_locked(cell) and apt_lock_path(cell.os).exists():
        return
    if cell.cuda.index != "default":
        raise UserError(
            f"cell {cell.id} has no lock: its wheels come from the index "
            f"'{cell.cuda.index}'; set {indexes.env_var(cell.cuda.index)} to its URL and run "
            f"'python build.py lock {cell.id}'"
        )
    raise UserError(f"cell {cell.id} has no lock: run 'python build.py lock {cell.id}'")


def _apt_lines(os_: OS) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256 or '') of an OS's apt lock ({} before the first lock)."""
    path = apt_lock_path(os_)
    if not path.exists():
        return {}
    lines = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            pin, _, sha = line.partition(" sha256:")
            name, _, version = pin.partition("=")
            lines[name] = (version, sha)
    return lines


def apt_pins(os_: OS) -> dict[str, str]:
    """The pinned apt versions of an OS ({} before the first lock)."""
    return {name: version for name, (version, _) in _apt_lines(os_).items()}


def package_manager_deb(os_: OS) -> tuple[str, str] | None:
    """(version, SHA-256) of the locked .deb of names.PACKAGE_MANAGER, None before the lock
    records it."""
    version, sha = _apt_lines(os_).get(names.PACKAGE_MANAGER, ("", ""))
    return (version, sha) if version and sha else None


def check_apt_pins(os_: OS, mirrors: debian.Mirrors) -> None:
    """Stop before building when a pinned apt version is not in the archive the build reads."""
    if not os_.suite:
        return
    available = debian.fetch_versions(mirrors, os_.suite)
    for name, version in apt_pins(os_).items():
        if version not in available.get(name, frozenset()):
            newest = debian.newest(available[name]) if name in available else "nothing"
            where = (f"the snapshot of {mirrors.snapshot}" if mirrors.snapshot
                     else f"the Debian mirror {mirrors.archive}")
            raise UserError(
                f"{apt_lock_path(os_).relative_to(ROOT)}: {name}={version} is not in {where} "
                f"(it has {newest}); build this commit as it was from a snapshot mirror "
                f"(--snapshot-mirror URL or {debian.SNAPSHOT_ENV}), or move the pins to the "
                "mirror's versions with 'python build.py lock'")


def locked_versions(path: Path) -> dict[str, str]:
    """name -> version of a pip lock file."""
    out = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line)
        if match:
            out[_norm(match.group(1))] = match.group(2)
    return out


@dataclass(frozen=True)
class Locked:
    """One requirement of a pip lock: name==version and the hashes of its files."""

    name: str
    version: str
    hashes: frozenset[str]
    text: str


def locked_requirements(path: Path) -> list[Locked]:
    """The requirement blocks of a pip lock file, in its order."""
    text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("#"))
    out = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text.strip()):
        match = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", block)
        if match:
            out.append(Locked(_norm(match.group(1)), match.group(2),
                              frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", block)),
                              block + "\n"))
    return out


def installer() -> Locked:
    """The locked uv that installs the images' Python environments (TOOLS_LOCK)."""
    found = next((r for r in locked_requirements(TOOLS_LOCK) if r.name == "uv"), None)
    if found is None:
        raise UserError(f"{TOOLS_LOCK.relative_to(ROOT)} does not lock uv")
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class LockResult:
    """What `lock` did for one cell or OS."""

    target: str
    status: str
    detail: str


def lock_apt(matrix: Matrix, os_: OS, mirrors: debian.Mirrors) -> LockResult:
    """Resolve the newest version of every apt package the OS's images name."""
    if not os_.suite:
        return LockResult(os_.name, "skipped", "registry base: apt pins come from the image")
    available = debian.fetch_packages(mirrors, os_.suite)
    packages = sorted({names.PACKAGE_MANAGER, *(p for g in ("runtime", *VARIANTS)
                                                for p in matrix.apt_packages(os_, g))})
    missing = [n for n in packages if n not in available]
    if missing:
        raise UserError(f"{matrix.source}: apt package(s) {', '.join(missing)} "
                        f"do not exist in Debian {os_.suite}")
    _, sha = debian.locate_deb(mirrors, os_.suite, names.PACKAGE_MANAGER,
                               available[names.PACKAGE_MANAGER])
    body = "".join(f"{n}={available[n]}" + (f" sha256:{sha}" if n == names.PACKAGE_MANAGER else "")
                   + "\n" for n in packages)
    _write(apt_lock_path(os_), f"# apt pins for {os_.name}, written by build.py lock\n{body}")
    return LockResult(f"{os_.name} (apt)", "locked", f"{len(packages)} packages")


def lock_cell(matrix: Matrix, cell: Cell, uv: str) -> LockResult:
    """Hash-lock the runtime, dev and prod environments of one cell."""
    _, missing_var = indexes.cell_index(cell)
    if missing_var:
        return LockResult(cell.id, "skipped",
                          f"needs the wheel index '{cell.cuda.index}': set {missing_var}")
    index_args = indexes.pip_index_args(cell)
    with tempfile.TemporaryDirectory() as tmp:
        runtime = _compile(uv, matrix.pip_requirements(cell, "runtime"), cell, index_args,
                           Path(tmp), None)
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, v in _pairs(runtime)))
        variants = {v: _compile(uv, matrix.pip_requirements(cell, v), cell, index_args,
                                Path(tmp), constraints) for v in VARIANTS}
    header = (f"# {cell.id}: Python {cell.os.python}, {PLATFORM}; written by build.py lock\n")
    _write(pip_lock_path(cell, "runtime"), header + runtime)
    runtime_names = {n for n, _ in _pairs(runtime)}
    for variant, text in variants.items():
        _write(pip_lock_path(cell, variant), header + _without(text, runtime_names))
    count = len(runtime_names)
    return LockResult(cell.id, "locked", f"{count} runtime packages + "
                      + ", ".join(f"{len(_pairs(_without(t, runtime_names)))} {v}"
                                  for v, t in variants.items()))


def _compile(uv: str, requirements: list[str], cell: Cell, index_args: list[str],
             tmp: Path, constraints: Path | None) -> str:
    """Run the resolver; return the hash-locked requirements text."""
    source = tmp / "requirements.in"
    source.write_text("\n".join(requirements) + "\n")
    cmd = [uv, "pip", "compile", str(source), "--quiet", "--generate-hashes", "--no-header",
           "--no-annotate", "--python-version", cell.os.python, "--python-platform", PLATFORM,
           *index_args]
    if constraints:
        cmd += ["--constraint", str(constraints)]
    env = {**os.environ, "UV_NATIVE_TLS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise UserError(f"cannot lock cell {cell.id}: the resolver failed ({tail})")
    return proc.stdout


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(_norm(m.group(1)), m.group(2))
            for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)]


def _without(text: str, names: set[str]) -> str:
    """Drop requirement blocks (with their hash lines) of packages in `names`."""
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    kept = [b for b in blocks if b and _norm(re.split(r"[=\s]", b, maxsplit=1)[0]) not in names]
    return "\n".join(kept) + ("\n" if kept else "")


def _write(path: Path, text: str) -> None:
    """Write atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
