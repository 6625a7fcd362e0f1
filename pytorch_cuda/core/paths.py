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

# What the images are made of: the commit time of their last change is SOURCE_DATE_EPOCH.
IMAGE_INPUTS = ("versions.yaml", "templates", "locks", "images", "server")
