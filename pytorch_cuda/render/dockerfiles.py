"""`build.py render`: Dockerfiles from templates/ and the matrix into images/, atomically."""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from pathlib import Path

import jinja2

from pytorch_cuda.core import names
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import IMAGE_FILES, IMAGES, ROOT, TEMPLATES
from pytorch_cuda.build import wheelhouse
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import Image, Matrix

APT_CLEANUP = (f"sed -i -E {shlex.quote(names.SHADOW_DATES)} /etc/shadow && rm -rf "
               + " ".join(names.VOLATILE_FILES))

LEAVE_OUT_SCRIPT = IMAGE_FILES / "build" / "leave-out"
STEP_TMP = "/tmp/ptc"
"""Where a step keeps what it fetched, removed before it ends."""
UV = f"{STEP_TMP}/uv"
UV_OPTIONS = (f"--no-config --color never --no-cache --no-index --find-links {names.WHEELHOUSE_URL}{names.WHEELS_PATH} "
              "--no-deps --require-hashes --only-binary :all: --compile-bytecode")
"""How a step installs a locked environment: the locked uv, from the wheelhouse only, every wheel
hash-checked, bytecode compiled (hash-based: the step sets SOURCE_DATE_EPOCH)."""
UNPACK_UV = ("'import sys,zipfile;z=zipfile.ZipFile(sys.argv[1]);open(sys.argv[2],\"wb\").write("
             "z.read(next(n for n in z.namelist() if n.endswith(\".data/scripts/uv\"))))'")
"""Takes the uv program out of its wheel (a step has no uv before it fetches one)."""

PRIVATE_MOUNTS = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf",
                  "/etc/mtab", "/.dockerenv")
"""What the engine mounts or adds in a build container (its init layer): never part of a layer, so
never touched (touching one would copy it into the step's layer)."""


def settle_mtimes(since: int | None) -> str:
    """What ends every RUN: whatever the step made or changed (newer than the base's epoch) gets
    that epoch as its mtime, so two builds of the step give the same layer ('' without a bootstrap
    epoch, for a pulled base)."""
    if not since:
        return ""
    skip = " -o ".join(f"-path {path}" for path in PRIVATE_MOUNTS)
    return (f" \\\n && find / -xdev \\( {skip} \\) -prune"
            f" -o -newermt @{since} -exec touch -h -d @{since} {{}} +")


FETCH = ('import hashlib,sys,urllib.request as u;url,sums,dest=sys.argv[1:];'
         'data=u.urlopen(url).read();got=hashlib.sha256(data).hexdigest();'
         'got in sums.split(",") or sys.exit(f"{url}: sha256 {got}, not the one the Dockerfile names");'
         'open(dest,"wb").write(data)')
"""Fetches one file from the wheelhouse and checks its SHA-256 (the Dockerfile names it, so a
changed input changes the step and its cache key)."""


def fetch_function(python: str) -> str:
    """The shell function a step that fetches from the wheelhouse defines first."""
    return f"fetch() {{ python{python} -c {shlex.quote(FETCH)} \"$@\"; }}"


UNLOCKED = "unlocked"
"""What a Dockerfile names instead of a hash while its cell has no lock (it cannot be built yet)."""


def fetch_input(path: Path, dest: str) -> str:
    """`fetch` arguments for a project file served by its SHA-256."""
    sha = wheelhouse.sha256_file(path) if path.exists() else UNLOCKED
    return f"{names.WHEELHOUSE_URL}{names.INPUTS_PATH}{sha} {sha} {dest}"


def package_manager(image: Image) -> tuple[str, str]:
    """(`fetch` arguments, path) of the locked package-manager .deb dev installs back."""
    version, sha = locking.package_manager_deb(image.cell.os) or ("", UNLOCKED)
    name = debian.deb_name(names.PACKAGE_MANAGER, version) if version else f"{names.PACKAGE_MANAGER}.deb"
    dest = f"{STEP_TMP}/{name}"
    return f"{names.WHEELHOUSE_URL}{names.DEBS_PATH}{name} {sha} {dest}", dest


def installer(image: Image) -> dict[str, str]:
    """How a step gets the locked uv: `fetch` arguments (the wheelhouse's copy of the uv wheel for
    this platform, any of the lock's hashes) and the command that unpacks it to UV."""
    hashes = ",".join(sorted(locking.installer().hashes))
    wheel = f"{STEP_TMP}/{names.UV_WHEEL}"
    return {
        "fetch": f"{names.WHEELHOUSE_URL}{names.TOOLS_PATH}{names.UV_WHEEL} {hashes} {wheel}",
        "unpack": f"python{image.cell.os.python} -c {UNPACK_UV} {wheel} {UV} && chmod 0755 {UV}",
        "bin": UV,
    }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def runtime_labels(image: Image) -> dict[str, str]:
    """Labels naming the cell's pins (shared by dev and prod)."""
    cell, m = image.cell, image.cell.matrix
    return {
        names.label("cell"): cell.id,
        names.label("torch"): m.torch_version,
        names.label("cuda"): cell.cuda.version,
        names.label("cudnn"): m.cudnn,
        names.label("nccl"): m.nccl,
        names.label("python"): cell.os.python,
        names.label("os"): f"{cell.os.distro}-{cell.os.version}-{cell.os.name}",
        names.label("cuda-arch-list"): cell.cuda.arch_list,
        names.label("min-driver"): cell.cuda.min_driver,
    }


def variant_labels(image: Image) -> dict[str, str]:
    """OCI labels known before the build (the build adds created, revision and base digest)."""
    project = image.cell.matrix.raw["project"]
    return {
        "org.opencontainers.image.title": f"{project['name']} {image.variant}",
        "org.opencontainers.image.description":
            project["description"] + " (" + image.cell.matrix.raw["variants"][image.variant]["description"] + ")",
        "org.opencontainers.image.licenses": project["licenses"],
        "org.opencontainers.image.source": image.cell.matrix.source_url,
        "org.opencontainers.image.version": image.full_tag,
        "org.opencontainers.image.base.name": names.base_ref(image.cell),
        names.label("variant"): image.variant,
    }


def render_image(env: jinja2.Environment, image: Image) -> str:
    """The Dockerfile text of one image."""
    cell, matrix = image.cell, image.cell.matrix
    pins = locking.apt_pins(cell.os)
    context = {
        "cell": cell,
        "variant": image.variant,
        "python": cell.os.python,
        "base_ref": names.base_ref(cell),
        "apt_pins": pins,
        "variant_apt": matrix.apt_packages(cell.os, image.variant),
        "package_manager": package_manager(image),
        "apt_cleanup": APT_CLEANUP,
        "user_cleanup": (f"sed -i -E {shlex.quote(names.SHADOW_DATES)} /etc/shadow && rm -f "
                         + " ".join(p for p in names.VOLATILE_FILES if p.startswith("/etc/"))),
        "fetch_fn": fetch_function(cell.os.python),
        "inputs": {
            "runtime": fetch_input(locking.pip_lock_path(cell, "runtime"), f"{STEP_TMP}/runtime.txt"),
            "dev": fetch_input(locking.pip_lock_path(cell, "dev"), f"{STEP_TMP}/dev.txt"),
            "leave_out": fetch_input(LEAVE_OUT_SCRIPT, f"{STEP_TMP}/leave-out"),
        },
        "uv": installer(image),
        "uv_options": UV_OPTIONS,
        "wheels_url": names.WHEELHOUSE_URL + names.WHEELS_PATH,
        "step_tmp": STEP_TMP,
        "path_runtime": names.path_env("/opt/venv"),
        "path_variant": names.path_env(f"/opt/venv-{image.variant}", "/opt/venv"),
        "locks": {g: locking.pip_lock_path(cell, g).relative_to(ROOT).as_posix()
                  for g in locking.GROUPS},
        "nvidia_require_cuda": f"cuda>={cell.cuda.major_minor}",
        "runtime_labels": runtime_labels(image),
        "variant_labels": variant_labels(image),
        "user": matrix.raw["project"]["user"],
        "leave_out": " ".join(shlex.quote(f"dist:{r['dist']}" if "dist" in r else f"path:{r['path']}")
                              for r in matrix.leave_out()),
        "export": names.EXPORT_DIR,
        "settle": settle_mtimes(cell.os.bootstrap_epoch),
        "ports": matrix.raw["variants"][image.variant]["ports"],
    }
    missing = [n for n in (*matrix.apt_packages(cell.os, "runtime"), *context["variant_apt"])
               if n not in pins]
    if missing:
        raise UserError(f"{locking.apt_lock_path(cell.os).relative_to(ROOT)} has no pin for "
                        f"{', '.join(missing)}: run 'python build.py lock'")
    try:
        return env.get_template("Dockerfile.j2").render(context)
    except jinja2.TemplateError as exc:
        where = f" line {exc.lineno}" if getattr(exc, "lineno", None) else ""
        raise UserError(f"templates/Dockerfile.j2{where}: {exc.message} ({image.name})") from None


def image_manifest(image: Image) -> str:
    """The companion file of one image: its tags, pins and labels, for people and tools."""
    cell = image.cell
    data = {
        "image": image.name,
        "cell": cell.id,
        "variant": image.variant,
        "repository": cell.matrix.repository,
        "tags": image.tags,
        "base": names.base_ref(cell),
        "pins": {
            "torch": cell.torch_version_reported, "cuda": cell.cuda.major_minor,
            "cudnn": cell.matrix.cudnn, "nccl": cell.matrix.nccl, "python": cell.os.python,
            "arch_list": cell.cuda.arch_list, "os": f"{cell.os.distro} {cell.os.version}",
        },
        "labels": {**runtime_labels(image), **variant_labels(image)},
    }
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def render_tree(matrix: Matrix) -> dict[str, str]:
    """Every file of images/ (relative path -> text), rendered in memory."""
    env = _environment()
    files: dict[str, str] = {}
    for image in matrix.images():
        folder = names.image_folder(image)
        files[f"{folder}/{names.DOCKERFILE}"] = render_image(env, image)
        files[f"{folder}/image.json"] = image_manifest(image)
    return files


def differences(files: dict[str, str], target: Path = IMAGES) -> list[str]:
    """Relative paths that differ between the rendered tree and `target`."""
    existing = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()} if (
        target.exists()) else set()
    changed = [p for p, text in files.items()
               if p not in existing or (target / p).read_text() != text]
    return sorted(changed + [p for p in existing if p not in files])


def write_tree(files: dict[str, str], target: Path = IMAGES) -> None:
    """Replace `target` with the rendered tree; an interruption leaves the old tree whole."""
    _recover(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        old = target.parent / f".{target.name}.old"
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recover(target: Path) -> None:
    """Put back the previous tree if an earlier swap was cut short."""
    old = target.parent / f".{target.name}.old"
    if old.exists():
        if target.exists():
            shutil.rmtree(old)
        else:
            old.rename(target)
    for stale in target.parent.glob(f".{target.name}.new-*"):
        shutil.rmtree(stale, ignore_errors=True)
