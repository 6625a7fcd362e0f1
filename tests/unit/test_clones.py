"""Any clone of a commit renders and sends the same bytes, whatever its path or remote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytorch_cuda.core.paths import ROOT

# Run inside a clone: what a build of the default cell would label and send.
PROBE = """
import hashlib, json, sys, tempfile
from pathlib import Path
from pytorch_cuda.build.builder import build_labels
from pytorch_cuda.build.context import write_context
from pytorch_cuda.core import gitinfo
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.matrix import load_matrix
from pytorch_cuda.render import dockerfiles

matrix = load_matrix(VERSIONS)
cell = matrix.default_cell
files = dockerfiles.render_tree(matrix)
with tempfile.TemporaryDirectory() as tmp:
    context = Path(tmp) / "context.tar"
    write_context(cell, context, gitinfo.source_date_epoch())
    digest = hashlib.sha256(context.read_bytes()).hexdigest()
json.dump({
    "files": files,
    "drift": dockerfiles.differences(files),
    "labels": {i.name: build_labels(i, "sha256:" + "0" * 64) for i in cell.images()},
    "context": digest,
}, sys.stdout, sort_keys=True)
"""


def _clone(source: Path, target: Path, remote: str | None = None) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(source), str(target)],
                   check=True, capture_output=True)
    if remote:
        subprocess.run(["git", "-C", str(target), "remote", "set-url", "origin", remote],
                       check=True)
    return target


def _probe(clone: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(clone)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=clone, env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history of the project")
def test_two_clones_give_identical_dockerfiles_labels_and_contexts(tmp_path):
    first = _probe(_clone(ROOT, tmp_path / "a"))
    second = _probe(_clone(ROOT, tmp_path / "elsewhere" / "deeper" / "b",
                           remote="https://example.org/someone/fork.git"))
    assert first["drift"] == [] and second["drift"] == []
    assert first["files"] == second["files"]
    assert first["labels"] == second["labels"]
    assert first["context"] == second["context"]
    labels = first["labels"]
    for image_labels in labels.values():
        assert "org.opencontainers.image.source" not in image_labels  # rendered, not per build
    dockerfile = next(text for path, text in first["files"].items() if path.endswith("Dockerfile"))
    assert 'org.opencontainers.image.source="https://' in dockerfile
    assert str(tmp_path) not in json.dumps(first) + json.dumps(second)
