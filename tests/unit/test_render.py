"""Rendering: determinism, the drift check, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytorch_cuda.build import wheelhouse
from pytorch_cuda.core import names
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.render import dockerfiles
from pytorch_cuda.matrix import load_matrix
from pytorch_cuda.core.paths import VERSIONS


def test_render_is_deterministic():
    matrix = load_matrix(VERSIONS)
    assert dockerfiles.render_tree(matrix) == dockerfiles.render_tree(load_matrix(VERSIONS))


def test_committed_images_match_the_templates(run_cli):
    code, out, err = run_cli("render", "--check")
    assert code == 0, err


def test_every_cell_has_a_dockerfile_per_variant():
    files = dockerfiles.render_tree(load_matrix(VERSIONS))
    for cell in load_matrix(VERSIONS).cells:
        for variant in ("dev", "prod"):
            assert f"{cell.id}/{variant}/Dockerfile" in files


def test_dev_and_prod_share_the_heavy_stages():
    files = dockerfiles.render_tree(load_matrix(VERSIONS))
    dev = files["cu128-bookworm/dev/Dockerfile"]
    prod = files["cu128-bookworm/prod/Dockerfile"]
    def stage(text: str, name: str) -> str:
        return text.split(f"AS {name}\n", 1)[1].split("\n# ----", 1)[0]
    for name in ("os", "runtime"):
        assert stage(dev, name) == stage(prod, name)


def test_prod_is_hardened_in_the_dockerfile():
    prod = dockerfiles.render_tree(load_matrix(VERSIONS))["cu128-bookworm/prod/Dockerfile"]
    assert "\nUSER 1000:1000\n" in prod and "HEALTHCHECK" in prod
    final = prod.split("AS prod\n", 1)[1]
    assert "build-ca" not in final and "PIP_CERT" not in final
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=12.8"' in prod


def test_no_shared_step_runs_the_package_manager_and_dev_installs_it_by_hash():
    matrix = load_matrix(VERSIONS)
    cell = matrix.default_cell
    files = dockerfiles.render_tree(matrix)
    version, sha = locking.package_manager_deb(cell.os)
    deb = debian.deb_name(names.PACKAGE_MANAGER, version)
    for variant in ("dev", "prod"):
        text = files[f"{cell.id}/{variant}/Dockerfile"]
        shared = text.split(f"AS {variant}\n", 1)[0]  # the base has no package manager to run
        assert "apt-get" not in shared and "dpkg" not in shared
    dev = files[f"{cell.id}/dev/Dockerfile"].split("AS dev\n", 1)[1]
    fetched = f"{names.WHEELHOUSE_URL}{names.DEBS_PATH}{deb} {sha} {dockerfiles.STEP_TMP}/{deb}"
    assert f"fetch {fetched} \\\n && dpkg -i {dockerfiles.STEP_TMP}/{deb} \\\n && apt-get update" in dev
    prod = files[f"{cell.id}/prod/Dockerfile"].split("AS prod\n", 1)[1]
    assert "apt-get" not in prod and "dpkg" not in prod  # nothing to remove


def test_drift_is_listed(tmp_path: Path):
    files = {"a/Dockerfile": "x\n", "b/Dockerfile": "y\n"}
    dockerfiles.write_tree(files, tmp_path / "images")
    (tmp_path / "images/a/Dockerfile").write_text("edited\n")
    (tmp_path / "images/stale.txt").write_text("old\n")
    assert dockerfiles.differences(files, tmp_path / "images") == ["a/Dockerfile", "stale.txt"]


def test_interrupted_render_keeps_the_old_tree(tmp_path: Path, monkeypatch):
    target = tmp_path / "images"
    dockerfiles.write_tree({"a/Dockerfile": "old\n"}, target)
    real_rename = Path.rename

    def broken(self, dst):
        if self.name.startswith(".images.new-"):
            raise KeyboardInterrupt
        return real_rename(self, dst)

    monkeypatch.setattr(Path, "rename", broken)
    with pytest.raises(KeyboardInterrupt):
        dockerfiles.write_tree({"a/Dockerfile": "new\n"}, target)
    monkeypatch.setattr(Path, "rename", real_rename)
    dockerfiles.write_tree({"b/Dockerfile": "next\n"}, target)  # recovers, then writes
    assert (target / "b/Dockerfile").read_text() == "next\n"
    assert not list(tmp_path.glob(".images.*"))


def test_recovery_after_a_cut_swap(tmp_path: Path):
    target = tmp_path / "images"
    dockerfiles.write_tree({"a/Dockerfile": "old\n"}, target)
    target.rename(tmp_path / ".images.old")  # the swap stopped between its two renames
    dockerfiles._recover(target)
    assert (target / "a/Dockerfile").read_text() == "old\n"


def _runs_and_copies(text: str) -> tuple[list[str], list[str]]:
    """The RUN instructions (continuation lines joined) and the COPY lines of a Dockerfile."""
    lines = text.replace("\\\n", " ").splitlines()
    return ([line for line in lines if line.startswith("RUN ")],
            [line for line in lines if line.startswith("COPY ")])


@pytest.mark.parametrize("variant", ["dev", "prod"])
def test_every_step_gives_the_same_layer_every_build(variant: str):
    matrix = load_matrix(VERSIONS)
    cell = matrix.default_cell
    text = dockerfiles.render_tree(matrix)[f"{cell.id}/{variant}/Dockerfile"]
    runs, copies = _runs_and_copies(text)
    since = cell.os.bootstrap_epoch
    settle = f"-prune -o -newermt @{since} -exec touch -h -d @{since} {{}} +"
    assert runs and all(run.endswith(settle) for run in runs)
    stages = {block.split("\n", 1)[0].split(" AS ")[1]: block for block in text.split("\nFROM ")[1:]}
    assert set(stages) == {"os", "runtime", variant} | ({"prod-env"} if variant == "prod" else set())
    final = "".join(block for name, block in stages.items() if not name.endswith("-env"))
    for line in _runs_and_copies(final)[1]:
        source = line.split()[-2]
        # side-stage output arrives as a tree rooted at /, so no folder gets the time of the copy
        assert line.endswith(" /") and source.endswith("/"), line
        if "--from=" in line:
            assert source.startswith("/export/"), line
    if variant == "prod":  # the side stage may copy into a folder: its layers are never shipped
        assert len(copies) > len(_runs_and_copies(final)[1])


def test_final_stages_fetch_their_inputs_by_hash_and_never_see_the_ca():
    matrix = load_matrix(VERSIONS)
    cell = matrix.default_cell
    files = dockerfiles.render_tree(matrix)
    lock = locking.pip_lock_path(cell, "runtime")
    sha = wheelhouse.sha256_file(lock)
    for variant in ("dev", "prod"):
        text = files[f"{cell.id}/{variant}/Dockerfile"]
        assert f"{names.WHEELHOUSE_URL}{names.INPUTS_PATH}{sha} {sha} " in text
        assert "PIP_CERT" not in text and "ARG PIP_INDEX_URL" not in text
        assert "--no-index" in text and "--require-hashes" in text
    unlocked = files["cu126-bookworm/dev/Dockerfile"]
    assert f"{names.INPUTS_PATH}{dockerfiles.UNLOCKED} {dockerfiles.UNLOCKED} " in unlocked


def test_no_settling_without_a_bootstrap_epoch():
    assert dockerfiles.settle_mtimes(None) == ""
    assert dockerfiles.settle_mtimes(0) == ""
    command = dockerfiles.settle_mtimes(1_700_000_000)
    for private in dockerfiles.PRIVATE_MOUNTS:
        assert f"-path {private} " in command
