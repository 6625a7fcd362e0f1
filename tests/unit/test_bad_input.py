"""Every kind of bad versions.yaml gets exit code 2 and one sentence naming file, key and fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytorch_cuda.core.paths import IMAGES


def _error(run_cli, path: Path, *command: str) -> str:
    before = sorted(p for p in IMAGES.rglob("*"))
    code, _, err = run_cli("--versions", str(path), *(command or ("render", "--check")))
    assert code == 2, err
    assert sorted(p for p in IMAGES.rglob("*")) == before
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_yaml_syntax_error_names_the_line(run_cli, versions):
    versions.write_text(versions.read_text() + "\ntorch: [unclosed\n")
    msg = _error(run_cli, versions)
    assert "versions.yaml line" in msg


def test_empty_file(run_cli, versions):
    versions.write_text("")
    assert "versions.yaml: the file is empty" in _error(run_cli, versions)


def test_alias_bomb_is_refused(run_cli, versions):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
           "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n"
    versions.write_text(bomb)
    msg = _error(run_cli, versions)
    assert "aliases are not allowed" in msg and "line 2" in msg


def test_duplicate_key(run_cli, versions):
    versions.write_text(versions.read_text() + "\nschema: 1\n")
    assert "duplicate key schema" in _error(run_cli, versions)


def test_unknown_key(run_cli, edit):
    path = edit(lambda d: d["torch"].update(colour="blue"))
    msg = _error(run_cli, path)
    assert "torch.colour: unknown key" in msg and "line" in msg


def test_wrong_type(run_cli, edit):
    path = edit(lambda d: d["torch"].update(version=2.8))
    msg = _error(run_cli, path)
    assert "torch.version: must be a version such as 2.8.0, not a number 2.8" in msg


def test_malformed_version(run_cli, edit):
    path = edit(lambda d: d["cuda"]["cu128"].update(version="12.8.x"))
    assert "cuda.cu128.version: '12.8.x' is not a version" in _error(run_cli, path)


def test_missing_key(run_cli, edit):
    path = edit(lambda d: d["torch"].pop("nccl"))
    assert "torch: missing key 'nccl'" in _error(run_cli, path)


def test_cuda_flavor_the_release_does_not_offer(run_cli, edit):
    path = edit(lambda d: d["matrix"]["cuda"].append("cu118"))
    msg = _error(run_cli, path)
    assert "matrix.cuda[3]: 'cu118' is not a CUDA flavor torch 2.8.0 offers" in msg


def test_cuda_version_must_match_flavor(run_cli, edit):
    path = edit(lambda d: d["cuda"]["cu128"].update(version="12.6.3"))
    assert "does not match the flavor name cu128" in _error(run_cli, path)


def test_python_outside_the_release_range(run_cli, edit):
    path = edit(lambda d: d["os"]["trixie"].update(python="3.14"))
    msg = _error(run_cli, path)
    assert "os.trixie.python: Python 3.14 is outside torch 2.8.0's range 3.9-3.13" in msg


def test_duplicate_tags(run_cli, edit):
    path = edit(lambda d: d["tags"].update(full="{torch}-{variant}"))
    msg = _error(run_cli, path)
    assert "tag '2.8.0-dev' is given to both" in msg


def test_unknown_tag_field(run_cli, edit):
    path = edit(lambda d: d["tags"].update(full="{torch}-{colour}"))
    assert "uses an unknown field 'colour'" in _error(run_cli, path)


def test_default_that_names_no_cell(run_cli, edit):
    path = edit(lambda d: d["matrix"]["default"].update(os="buster"))
    assert "matrix.default: cu128-buster names no cell" in _error(run_cli, path)


def test_unpinned_variant_package(run_cli, edit):
    path = edit(lambda d: d["variants"]["prod"].update(pip=["aiohttp"]))
    assert "variants.prod.pip[0]: 'aiohttp' must be pinned with ==version" in _error(run_cli, path, "lock", "cu128-bookworm")


def test_base_image_must_be_pinned_by_digest(run_cli, edit):
    path = edit(lambda d: d["os"]["bookworm"].update(base={"image": "debian:bookworm"}))
    assert "an image reference pinned by digest" in _error(run_cli, path)


@pytest.mark.parametrize("command", [("build", "cu999-bookworm"), ("lock", "cu999-bookworm")])
def test_unknown_cell_argument(run_cli, versions, command):
    msg = _error(run_cli, versions, *command)
    assert "unknown cell 'cu999-bookworm'" in msg and "cu128-bookworm" in msg


def test_missing_file(run_cli, tmp_path):
    assert "file not found" in _error(run_cli, tmp_path / "nope.yaml")


@pytest.mark.parametrize("source", ["/srv/checkout", "git@example.org:team/repo.git",
                                    "file:///srv/repo", "ftp://example.org/repo"])
def test_source_must_be_an_http_url(run_cli, edit, source):
    path = edit(lambda d: d["project"].update(source=source))
    msg = _error(run_cli, path)
    assert "versions.yaml line" in msg
    assert f"project.source: {source!r} is not an http(s) URL of the source repository" in msg


@pytest.mark.parametrize("snapshot, fault", [
    ("yesterday", "'yesterday' is not a UTC time such as 2026-11-28T00:00:00Z"),
    ("2026-02-30T00:00:00Z", "'2026-02-30T00:00:00Z' is not a valid time"),
    ("2999-01-01T00:00:00Z", "2999-01-01T00:00:00Z is in the future"),
])
def test_bad_snapshot_time(run_cli, edit, snapshot, fault):
    path = edit(lambda d: d["archive"].update(snapshot=snapshot))
    msg = _error(run_cli, path)
    assert "versions.yaml line" in msg and f"archive.snapshot: {fault}" in msg


@pytest.mark.parametrize("rule, fault", [
    ({"dist": "triton", "path": "triton", "reason": "x"}, "must give exactly one of 'dist' or 'path'"),
    ({"reason": "x"}, "must give exactly one of 'dist' or 'path'"),
    ({"path": "/opt/venv/lib", "reason": "x"}, "is not a relative path or glob under site-packages"),
    ({"path": "../../bin", "reason": "x"}, "is not a relative path or glob under site-packages"),
    ({"dist": "triton"}, "missing key 'reason'"),
])
def test_bad_leave_out_rule(run_cli, edit, rule, fault):
    path = edit(lambda d: d["variants"]["prod"]["leave_out"].append(rule))
    msg = _error(run_cli, path)
    assert "versions.yaml line" in msg and "variants.prod.leave_out" in msg and fault in msg


def test_only_prod_leaves_files_out(run_cli, edit):
    path = edit(lambda d: d["variants"]["dev"].update(leave_out=[{"dist": "triton", "reason": "x"}]))
    assert "variants.dev.leave_out: only prod leaves files out" in _error(run_cli, path)


@pytest.mark.parametrize("budget", [0, -1, "6 GB", True])
def test_size_budget_must_be_a_positive_number(run_cli, edit, budget):
    path = edit(lambda d: d["variants"]["prod"].update(size_budget_gb=budget))
    assert "variants.prod.size_budget_gb: must be a positive number" in _error(run_cli, path)
