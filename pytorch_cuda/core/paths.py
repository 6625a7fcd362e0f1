"""Where things live in the repository (defined once)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "versions.yaml"
TEMPLATES = ROOT / "templates"
IMAGE_FILES = TEMPLATES / "files"
IMAGES = ROOT / "images"
LOCKS = ROOT / "locks"
SERVER = ROOT / "server"
STATE = ROOT / ".build"
TOOLS_LOCK = ROOT / "requirements-bootstrap.txt"
"""The hash-locked uv: it sets up the host tools and installs the images' Python environments."""

SERVER_PACKAGE = SERVER / "ptserve"

# What the images are made of, i.e. the roots of every build context: images/<cell>/ and
# locks/<cell>/, plus the files copied into every image. The commit time of their last change is
# SOURCE_DATE_EPOCH, so commits to the driver, tests, docs, or to a template or the matrix that
# render the same Dockerfiles, leave every layer byte-identical.
PER_CELL_INPUTS = (IMAGES, LOCKS)
SHARED_INPUTS = (IMAGE_FILES, SERVER_PACKAGE)
IMAGE_INPUTS = PER_CELL_INPUTS + SHARED_INPUTS
