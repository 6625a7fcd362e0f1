"""Names derived from the matrix and the layout, each defined once: paths, refs, labels, tags."""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from pytorch_cuda.matrix import Cell, Image

LABEL_PREFIX = "io.pytorch-cuda"
WHEELHOUSE_HOST = "wheelhouse"
WHEELHOUSE_PORT = 7309
"""Where build steps reach the host's wheelhouse: the host name the driver maps to the engine's
bridge gateway in every build container, and the port it serves on (fixed, so no cache key or
history line depends on the machine)."""
WHEELHOUSE_URL = f"http://{WHEELHOUSE_HOST}:{WHEELHOUSE_PORT}"
WHEELS_PATH = "/wheels/"
INPUTS_PATH = "/inputs/"
DEBS_PATH = "/debs/"
TOOLS_PATH = "/tools/"
UV_WHEEL = "uv.whl"
"""The wheelhouse's folders: the locked wheels (the --find-links page), the files a step fetches
by their SHA-256 (locks and build scripts, which a final stage must not COPY), the locked
package manager's .deb, and the locked uv wheel for this platform under a fixed name."""
PACKAGE_MANAGER = "apt"
"""The Debian package that no shared layer holds: the bootstrap purges it from the base (prod must
not have it, and deleting it in a later step would leave whiteouts stamped with the build's time);
dev installs it back from its locked .deb before its apt step."""
EXPORT_DIR = "/export"
"""Where side stages lay out what a final stage copies: EXPORT_DIR/<part>/ is a tree rooted at /
(copied with `COPY --from=STAGE EXPORT_DIR/<part>/ /`, which gives the same layer every build)."""
VOLATILE_FILES = (
    "/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-", "/var/lib/apt/lists/*_*",
    "/var/cache/apt/*.bin", "/var/log/apt", "/var/log/dpkg.log", "/var/log/alternatives.log",
    "/var/cache/ldconfig/aux-cache", "/var/cache/debconf/*-old", "/var/lib/dpkg/*-old",
)
"""Backups, caches and logs that package tools write: no image keeps them, and the base has none,
so no build step deletes a file of a lower layer (a whiteout carries the time it was made)."""
SHADOW_DATES = r"s/^([^:]*:[^:]*:)[0-9]+:/\1:/"
"""A sed expression that empties the date of the last password change in /etc/shadow (the day a
tool ran there)."""
DOCKERFILE = "Dockerfile"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def label(key: str) -> str:
    """A label of this project, e.g. label("cell") -> io.pytorch-cuda.cell."""
    return f"{LABEL_PREFIX}.{key}"


def image_folder(image: Image) -> str:
    """images/<cell>/<variant>, relative to the repository."""
    return f"{image.cell.id}/{image.variant}"


def dockerfile_path(image: Image) -> str:
    """The rendered Dockerfile of an image, relative to the repository (and the build context)."""
    return f"images/{image_folder(image)}/{DOCKERFILE}"


def base_ref(cell: Cell) -> str:
    """What the Dockerfile's FROM names for a cell's OS: a digest-pinned image or the bootstrap."""
    if cell.os.base_image:
        return cell.os.base_image
    return f"{cell.matrix.repository}-base:{cell.os.name}"


def cache_repository(cell: Cell) -> str:
    """Where raw builds and their side stages stay tagged as the build cache."""
    return f"{cell.matrix.repository}-cache"


def cache_tag(image: Image, stage: str | None = None) -> str:
    """The cache tag of a raw build (stage None) or of one of its side stages."""
    return f"{image.cell.id}-{stage or image.variant}"


def dated_tag(full_tag: str, date: str) -> str:
    """The release tag of a full tag on a date (YYYYMMDD)."""
    return f"{full_tag}-{date}"


def path_env(*venvs: str) -> str:
    """The PATH of an image whose virtual environments (most specific first) precede the system's."""
    return ":".join([*(f"{v}/bin" for v in venvs), SYSTEM_PATH])
