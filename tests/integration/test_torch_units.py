"""The unit tests that need torch, run with the prod image's own torch.

The host tools have no torch, so on the host these tests skip. Here they run in the prod
image (torch, numpy, aiohttp and prometheus-client at the locked versions), with the
host's pytest mounted beside them (pure Python): the model server's runtime, batching
and metrics, and the check code's TorchScript, pins and GPU-proof paths.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pytorch_cuda.core.paths import ROOT

TORCH_UNIT_TESTS = [
    "tests/unit/test_serve_batching.py",
    "tests/unit/test_serve_runtime.py",
    "tests/unit/test_serve_metrics.py",
    "tests/unit/test_checks_cli.py::test_torchscript_cpu_passes",
    "tests/unit/test_checks_cli.py::test_torchscript_cuda_without_gpu_fails_cleanly",
    "tests/unit/test_checks_cli.py::test_all_compares_pins",
    "tests/unit/test_gpu_proof.py::test_cuda_checks_never_share_parameters_with_their_reference",
    "tests/unit/test_gpu_proof.py::test_no_gpu_exits_2_for_real",
    "tests/unit/test_gpu_proof.py::test_whole_pipeline_on_cpu",
]
"""Every unit test that skips on the host for want of torch, but the custom-operator round
trip, which needs a compiler (test_prod.py runs custom operators in prod)."""
PYTEST_MODULES = ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments", "py")


def pytest_mounts() -> dict[str, dict[str, str]]:
    """The host's pytest and its dependencies, read-only under /tools/pytest."""
    mounts = {}
    for name in PYTEST_MODULES:
        spec = importlib.util.find_spec(name)
        assert spec and spec.origin, f"the host tools lack {name}"
        path = Path(spec.origin)
        if path.name == "__init__.py":
            path = path.parent
        mounts[str(path)] = {"bind": f"/tools/pytest/{path.name}", "mode": "ro"}
    return mounts


def test_unit_tests_that_need_torch_pass_with_the_images_torch(prod_image, containers):
    helper = containers(prod_image)
    code, out = helper.run(
        ["python", "-m", "pytest", "-p", "no:cacheprovider", "--noconftest", "-q", "-rs",
         *TORCH_UNIT_TESTS],
        entrypoint=[], working_dir="/src", read_only=True, tmpfs={"/tmp": ""},
        environment={"PYTHONPATH": "/tools/pytest:/src/server:/src/tests/incontainer",
                     "PYTHONDONTWRITEBYTECODE": "1"},
        volumes={**pytest_mounts(),
                 str(ROOT / "tests"): {"bind": "/src/tests", "mode": "ro"},
                 str(ROOT / "server"): {"bind": "/src/server", "mode": "ro"}})
    assert code == 0, f"{prod_image.name}: unit tests with its torch:\n{out[-4000:]}"
    assert " passed" in out and "skipped" not in out, out[-4000:]
