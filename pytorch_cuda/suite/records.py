"""Which image ID passed which test suite: publishing trusts only these records."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pytorch_cuda.core import gitinfo
from pytorch_cuda.core.paths import STATE

RECORDS = STATE / "test-records.json"
SUITE = "integration"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_pass(image_ids: dict[str, str], suite: str = SUITE, path: Path = RECORDS) -> None:
    """Remember that these images (name -> image ID) passed `suite` in full."""
    records = _load(path)
    for name, image_id in image_ids.items():
        records.setdefault(image_id, {})[suite] = {
            "image": name, "revision": gitinfo.revision(),
            "passed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def passed(image_id: str, suite: str = SUITE, path: Path = RECORDS) -> dict | None:
    """The passing record of an image ID for a suite, or None."""
    return _load(path).get(image_id, {}).get(suite)
