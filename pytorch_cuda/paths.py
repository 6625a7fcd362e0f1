"""Where things live in the repository (defined once)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSIONS = ROOT / "versions.yaml"
TEMPLATES = ROOT / "templates"
IMAGE_FILES = TEMPLATES / "files"
IMAGES = ROOT / "images"
LOCKS = ROOT / "locks"
SERVER = ROOT / "server"
STATE = ROOT / ".build"
