"""Every image: pins as versions.yaml says, toolkit env, TorchScript on CPU (and CUDA), labels.

Files, users and packages are checked with testinfra in test_images_infra.py.
"""

from __future__ import annotations

import re

import pytest

from .conftest import (CHECK_ENV, CHECK_MOUNTS, checks_command, expected_pins, left_out_dists,
                       pip_command, write_expect)

# pip check's line for a requirement prod leaves out on purpose (versions.yaml: leave_out)
MISSING_RE = re.compile(r"^\S+ [\w.+!-]+ requires ([A-Za-z0-9._-]+), which is not installed\.$")


@pytest.fixture(scope="module")
def report(any_image, client, tmp_path_factory):
    """`ptc_checks all --expect` run once per image, on the CPU."""
    from .containers import TrackedContainer

    expect = write_expect(any_image, tmp_path_factory.mktemp("expect"))
    helper = TrackedContainer(client, any_image.ref())
    try:
        return helper.run_json(
            checks_command("all", "--device", "cpu", "--expect", "/expect/expect.json"),
            entrypoint=[], environment=CHECK_ENV, read_only=True, tmpfs={"/tmp": ""},
            volumes={**CHECK_MOUNTS, str(expect.parent): {"bind": "/expect", "mode": "ro"}})
    finally:
        helper.cleanup()


PINS = ["python", "torch", "cuda", "cudnn", "nccl", "arch_list", "os_id", "os_version_id",
        "os_codename"]


@pytest.mark.parametrize("pin", PINS)
def test_pin(any_image, report, pin):
    found = [p for p in report["pins"] if p["name"] == pin]
    assert found, f"{any_image.name}: pin {pin} was not compared"
    p = found[0]
    assert p["passed"], (f"{any_image.name}: {pin} is {p['actual']!r}, "
                         f"versions.yaml says {p['expected']!r}")


def test_every_pin_passes(any_image, report):
    failed = [f"{p['name']}: expected {p['expected']!r}, found {p['actual']!r}"
              for p in report["pins"] if not p["passed"]]
    assert not failed, f"{any_image.name}: " + "; ".join(failed)


def test_every_locked_package_is_installed_at_its_version(any_image, report):
    failed = [p for p in report["pins"] if p["name"].startswith("packages.") and not p["passed"]]
    assert not failed, f"{any_image.name}: packages differ from the lock: " + "; ".join(
        f"{p['name'][9:]} expected {p['expected']} found {p['actual']}" for p in failed)
    assert len([p for p in report["pins"] if p["name"].startswith("packages.")]) > 20


def test_companions_where_the_variant_has_them(any_image, report):
    versions = report["versions"]
    companions = any_image.cell.matrix.companions
    if any_image.variant == "dev":
        assert versions["triton"] == companions["triton"]
    else:
        assert versions["triton"] is None, f"{any_image.name}: prod leaves triton out"
    for name in ("torchvision", "torchaudio"):
        if any_image.variant == "dev":
            assert versions[name] and versions[name].split("+")[0] == companions[name], (
                f"{any_image.name}: {name} is {versions[name]}, expected {companions[name]}")
        else:
            assert versions[name] is None, f"{any_image.name}: prod ships {name}"


def test_pip_check_and_freeze_match_the_lock(any_image, containers):
    helper = containers(any_image)
    kwargs = {"entrypoint": [], "volumes": CHECK_MOUNTS, "environment": CHECK_ENV}
    code, out = helper.run(pip_command("check"), **kwargs)
    left_out = left_out_dists(any_image)
    broken = [line for line in out.splitlines() if " requires " in line or " has requirement " in line]
    problems = [line for line in broken
                if not ((m := MISSING_RE.match(line)) and m.group(1).lower() in left_out)]
    assert not problems and (code == 0 or broken), (
        f"{any_image.name}: pip check is not clean:\n{out}")
    code, out = helper.run(pip_command("freeze", "--all"), **kwargs)
    frozen = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            frozen[name.lower().replace("_", "-").replace(".", "-")] = version
    expected = expected_pins(any_image)["packages"]
    extra = sorted(set(frozen) - set(expected) - {"pip", "setuptools"})
    assert not extra, f"{any_image.name}: installed but not locked: {extra}"
    wrong = {n: (v, frozen.get(n)) for n, v in expected.items() if frozen.get(n) != v}
    assert not wrong, f"{any_image.name}: lock vs pip freeze (expected, found): {wrong}"


def test_nvidia_toolkit_env(any_image, report):
    env = report["versions"]["env"]
    want = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "NVIDIA_REQUIRE_CUDA": f"cuda>={any_image.cell.cuda.major_minor}"}
    assert env == want, f"{any_image.name}: NVIDIA env is {env}, expected {want}"


def test_torchscript_on_cpu(any_image, report):
    failed = [c for c in report["torchscript"]["checks"] if not c["passed"]]
    assert not failed, f"{any_image.name}: TorchScript checks failed: {failed}"
    names = {c["name"] for c in report["torchscript"]["checks"]}
    assert {"control flow traced freezes branch", "save load cpu negative", "eval mode frozen",
            "conv net scripted"} <= names


def test_torchscript_on_cuda(any_image, containers, gpu):
    result = containers(any_image).run_json(
        checks_command("torchscript", "--device", "cuda"), entrypoint=[],
        environment=CHECK_ENV, volumes=CHECK_MOUNTS, **gpu)
    failed = [c for c in result["checks"] if not c["passed"]]
    assert not failed, f"{any_image.name}: CUDA checks failed: {failed}"
    smi = (result.get("cuda") or {}).get("nvidia_smi") or {}
    assert smi.get("returncode") == 0, f"{any_image.name}: nvidia-smi failed: {smi}"


def test_labels(any_image, client):
    labels = client.images.get(any_image.ref()).labels
    for key in ("created", "revision", "source", "version", "base.name", "base.digest",
                "title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels, f"{any_image.name}: no {key} label"
    assert labels["io.pytorch-cuda.torch"] == any_image.cell.matrix.torch_version
