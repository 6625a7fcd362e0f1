"""The package layout keeps its promises: stage packages, true docstrings, names defined once."""

from __future__ import annotations

import ast
import re

import pytest

from pytorch_cuda.core import names
from pytorch_cuda.core.paths import IMAGE_INPUTS, ROOT

PACKAGE = ROOT / "pytorch_cuda"
STAGES = ("core", "matrix", "render", "lock", "base", "build", "repro", "suite", "publish")
CODE = [p for d in ("pytorch_cuda", "bench") for p in (ROOT / d).rglob("*.py")]


def test_the_pipeline_is_in_the_folders():
    found = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert found == set(STAGES)
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py", "cli.py"}


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_module_says_what_it_does(path):
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc, f"{path} has no docstring"
    assert len(doc.splitlines()[0]) <= 100


@pytest.mark.parametrize("literal", [names.LABEL_PREFIX, "/Dockerfile\"", "}-cache\"", "pip.conf",
                                     "/usr/local/sbin:/usr/local/bin"])
def test_derived_names_are_spelled_only_in_core_names(literal):
    spelled = [p.relative_to(ROOT).as_posix() for p in CODE
               if literal in p.read_text() and p != ROOT / "pytorch_cuda/core/names.py"
               and p != ROOT / "pytorch_cuda/core/pipconfig.py"]
    assert spelled == []


def test_dockerignore_lets_through_only_the_image_inputs():
    allowed = [line[1:] for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
    assert sorted(allowed) == sorted(p.relative_to(ROOT).as_posix() + "/" for p in IMAGE_INPUTS)


def test_the_template_takes_path_from_the_renderer():
    template = (ROOT / "templates" / "Dockerfile.j2").read_text()
    assert not re.search(r"ENV PATH=/", template)
