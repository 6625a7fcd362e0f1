"""Slim prod: what it leaves out is gone (dev has it), the layers stay shared, sizes keep budgets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import docker
import docker.errors
import pytest
import yaml

from pytorch_cuda.core.progress import human_bytes
from pytorch_cuda.repro.saved import open_saved_image

from .conftest import clone_project, failing_build
from .containers import TrackedContainer

# Run inside an image: which leave_out rules match something, and which distributions are there.
PROBE = """
import glob, importlib.metadata, json, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
rules = json.loads(sys.argv[1])
found = {}
for rule in rules:
    if "dist" in rule:
        try:
            importlib.metadata.distribution(rule["dist"])
            found[rule["dist"]] = True
        except importlib.metadata.PackageNotFoundError:
            found[rule["dist"]] = False
    else:
        found[rule["path"]] = bool(glob.glob(site + "/" + rule["path"]))
print(json.dumps(found))
"""


def _present(client: docker.DockerClient, ref: str, rules: list[dict]) -> dict[str, bool]:
    helper = TrackedContainer(client, ref)
    try:
        code, out = helper.run(["/opt/venv/bin/python", "-c", PROBE, json.dumps(rules)],
                               entrypoint=[])
    finally:
        helper.cleanup()
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def test_prod_leaves_out_what_versions_yaml_lists_and_dev_keeps_it(dev_image, prod_image, client):
    rules = prod_image.cell.matrix.leave_out()
    assert rules, "versions.yaml lists nothing for prod to leave out"
    in_prod = _present(client, prod_image.ref(), rules)
    in_dev = _present(client, dev_image.ref(), rules)
    assert not any(in_prod.values()), f"{prod_image.name} still has: " + ", ".join(
        k for k, v in in_prod.items() if v)
    assert all(in_dev.values()), f"{dev_image.name} lacks: " + ", ".join(
        k for k, v in in_dev.items() if not v)


def test_dev_and_prod_share_the_heavy_layers(dev_image, prod_image, client):
    dev = client.images.get(dev_image.ref()).attrs["RootFS"]["Layers"]
    prod = client.images.get(prod_image.ref()).attrs["RootFS"]["Layers"]
    shared = next((i for i, (a, b) in enumerate(zip(dev, prod, strict=False)) if a != b),
                  min(len(dev), len(prod)))
    # the base (the OS and the packages every image runs with) and the heavy runtime layer
    assert shared >= 2, f"dev and prod share only {shared} layers: {dev[:3]} vs {prod[:3]}"


def _largest_own_files(client: docker.DockerClient, image_id: str, own: set[str],
                       tmp: Path, count: int = 5) -> list[tuple[int, str]]:
    """The biggest files in an image's own layers (not shared with its sibling variant)."""
    archive = tmp / "image.tar"
    with archive.open("wb") as out:
        for chunk in client.api.get_image(image_id, chunk_size=8 << 20):
            out.write(chunk)
    sizes: list[tuple[int, str]] = []
    with open_saved_image(archive, tmp) as saved:
        for layer in saved.layers:
            if layer.diff_id not in own:
                continue
            sizes += [(m.size, "/" + m.name) for m in layer.members() if m.isfile()]
    archive.unlink()
    return sorted(sizes, reverse=True)[:count]


def test_each_image_keeps_its_size_budget(any_image, client, tmp_path):
    image = client.images.get(any_image.ref())
    size, budget = image.attrs["Size"], any_image.cell.matrix.size_budget(any_image.variant)
    if size <= budget:
        return
    other = "prod" if any_image.variant == "dev" else "dev"
    sibling = set(client.images.get(any_image.cell.image(other).ref()).attrs["RootFS"]["Layers"])
    own = set(image.attrs["RootFS"]["Layers"]) - sibling
    largest = ", ".join(f"{path} ({human_bytes(n)})"
                        for n, path in _largest_own_files(client, image.id, own, tmp_path))
    pytest.fail(f"{any_image.name} is {human_bytes(size)}, over its budget of "
                f"{human_bytes(budget)} (versions.yaml: variants.{any_image.variant}."
                f"size_budget_gb); largest files of its own layers: {largest}")


@pytest.mark.parametrize("rule, needs", [
    ({"path": "torch/lib/libc10.so"}, re.compile(r"torch/lib/libc10\.so must stay: \S+ needs it "
                                                 r"\(DT_NEEDED libc10\.so\)")),
    ({"dist": "typing-extensions"}, re.compile(r"typing_extensions must stay: \S+ imports it")),
])
def test_leaving_out_what_torch_needs_stops_the_build(prod_image, client, tmp_path, rule, needs):
    """A leave_out rule that breaks torch: exit 2, one sentence naming the file and who needs it."""
    clone = clone_project(tmp_path / "clone")
    versions = clone / "versions.yaml"
    data = yaml.safe_load(versions.read_text())
    data["variants"]["prod"]["leave_out"].append({**rule, "reason": "a test of the check"})
    versions.write_text(yaml.safe_dump(data, sort_keys=False))
    subprocess.run([sys.executable, "build.py", "render"], cwd=clone, check=True,
                   capture_output=True)
    proc, left = failing_build(client, prod_image, clone)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(
        f"error: {prod_image.name}: variants.prod.leave_out in versions.yaml: "), error
    assert needs.search(error), error
    assert "Traceback" not in proc.stderr
    assert not left, f"tags left behind after a failed build: {left}"
