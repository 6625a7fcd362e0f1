"""Matrix expansion and the tag scheme."""

from __future__ import annotations

import json

from pytorch_cuda.matrix import load_matrix
from pytorch_cuda.core.paths import VERSIONS


def test_every_cuda_and_os_combination_is_a_cell():
    matrix = load_matrix(VERSIONS)
    assert [c.id for c in matrix.cells] == [
        "cu126-bookworm", "cu126-trixie", "cu128-bookworm", "cu128-trixie",
        "cu129-bookworm", "cu129-trixie",
    ]
    assert matrix.default_cell.id == "cu128-bookworm"
    assert len(matrix.images()) == 12


def test_full_tag_names_every_pin_and_default_aliases():
    matrix = load_matrix(VERSIONS)
    dev, prod = matrix.default_cell.images()
    assert dev.full_tag == "2.8.0-cu128-cudnn9.10-py3.11-bookworm-dev"
    assert prod.full_tag == "2.8.0-cu128-cudnn9.10-py3.11-bookworm-prod"
    assert "v2.8" in dev.aliases and "v2.8-prod" in prod.aliases
    assert dev.ref("v2.8") == "pytorch-cuda:v2.8"
    trixie = matrix.cell("cu128-trixie").image("prod")
    assert trixie.full_tag == "2.8.0-cu128-cudnn9.10-py3.13-trixie-prod"
    assert "v2.8-prod" not in trixie.aliases


def test_tags_are_unique_across_the_matrix():
    matrix = load_matrix(VERSIONS)
    tags = [t for i in matrix.images() for t in i.tags]
    assert len(tags) == len(set(tags))


def test_pip_requirements_derive_pins_from_the_release():
    matrix = load_matrix(VERSIONS)
    default = matrix.default_cell
    assert matrix.pip_requirements(default, "runtime")[0] == "torch==2.8.0"
    assert "torchvision==0.23.0" in matrix.pip_requirements(default, "dev")
    cu126 = matrix.cell("cu126-bookworm")
    assert matrix.pip_requirements(cu126, "runtime")[0] == "torch==2.8.0+cu126"
    assert "torchaudio==2.8.0+cu126" in matrix.pip_requirements(cu126, "dev")
    assert cu126.torch_version_reported == "2.8.0+cu126"


def test_apt_packages_substitute_the_os_python():
    matrix = load_matrix(VERSIONS)
    assert "python3.13-dev" in matrix.apt_packages(matrix.oses["trixie"], "dev")


def test_matrix_json_for_ci(run_cli):
    code, out, _ = run_cli("matrix", "--json")
    data = json.loads(out)
    assert code == 0
    assert {c["cell"] for c in data} >= {"cu128-bookworm", "cu128-trixie"}
    default = next(c for c in data if c["default"])
    assert default["images"]["prod"]["tag"] == "2.8.0-cu128-cudnn9.10-py3.11-bookworm-prod"


def test_matrix_table_marks_the_default(run_cli):
    code, out, _ = run_cli("matrix")
    assert code == 0
    assert "cu128-bookworm *" in out
