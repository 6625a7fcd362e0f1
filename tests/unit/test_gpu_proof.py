"""Unit tests of ``python -m ptc_checks gpu-proof`` and of its section in the bench report.

Without torch: the bad-input exits, the summary, the floor grouping, the wire
format, the "never share parameters" rule on fake modules, and the bench report
rendered from a sample report. With torch (skipped otherwise): the twin models
of the CUDA checks, the real no-GPU exit, and the whole pipeline on the CPU
through the internal ``--device cpu``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ptc_checks import __main__ as cli
from ptc_checks import floor, gpuproof, results

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

INCONTAINER = Path(gpuproof.__file__).resolve().parents[1]
SERVER = INCONTAINER.parents[1] / "server"


def run_proof(*args: str, pythonpath: list[Path] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m ptc_checks gpu-proof ARGS`` in a child, check code and server on the path."""
    path = [*(pythonpath or []), INCONTAINER, SERVER]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-m", "ptc_checks", "gpu-proof", *args],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)


def sample_report(ok: bool = True) -> dict[str, Any]:
    """A small gpu-proof report as an H200 host would write it."""
    results_ = []
    for model, eager in (("controlflow", 60.0), ("transformer", 400.0)):
        for mode, factor in (("eager", 1.0), ("script", 1.2), ("trace", 1.5), ("freeze", 1.4)):
            results_.append({
                "model": model, "batch": 1, "device": "cuda", "mode": mode,
                "median_us": eager / factor, "p99_us": eager, "speedup_vs_eager": factor,
                "speedup_round_min": factor - 0.1, "speedup_round_max": factor + 0.1,
                "max_abs_diff_vs_eager": 0.0, "tracer_warnings": 0})
    checks = [{"name": "cuda available", "passed": True, "detail": "", "part": "torchscript"},
              {"name": "serve drains on SIGTERM", "passed": ok, "detail": "", "part": "serve"}]
    return {
        "command": "gpu-proof", "report_version": 1, "ok": ok,
        "failed": [] if ok else ["serve drains on SIGTERM"], "checks": checks, "skipped": [],
        "elapsed_s": 95.0, "seconds": {"torchscript": 9.0, "serve": 30.0},
        "machine": {"where": "host", "hostname": "gpu-1", "date": "2026-01-02T03:04:05+00:00",
                    "os": {"id": "debian"}, "python": "3.12.3", "torch": "2.11.0+cu130",
                    "cuda": "13.0", "cudnn": 91300, "device": "cuda", "gpu": "NVIDIA H200",
                    "gpu_count": 1, "capability": "9.0", "gpu_memory_bytes": 150_000_000_000,
                    "driver": "580.65.06"},
        "serve": {"models": ["controlflow", "smallconv"], "ready_s": 3.6, "device": "cuda:0",
                  "load": {"clients": 32, "seconds": 5.0, "requests": 3000, "errors": 0,
                           "error_kinds": {}, "req_per_s": 612.0, "p50_ms": 52.0, "p99_ms": 64.0},
                  "drain": {"exit_code": 0, "seconds": 0.8, "requests": 4, "answered": 4,
                            "in_flight_at_sigterm": 4, "outcomes": ["ok"]}},
        "latency": {"device": "cuda", "rounds": 5, "seconds": 2.0,
                    "models": {"controlflow": "c", "transformer": "t"}, "results": results_},
        "floor": {"device": "cuda", "mapped_files": 900, "mapped_bytes": 3_500_000_000,
                  "site_packages_bytes": 3_400_000_000,
                  "packages": {"torch": 1_500_000_000, "nvidia/cudnn": 1_000_000_000},
                  "nvidia_libs": [{"package": "nvidia/cudnn", "file": "libcudnn.so.9",
                                   "bytes": 1000}],
                  "imported_bytes": 40_000_000, "triton_imported": False},
    }


# ------------------------------------------------------------- no torch needed


class FakeTensor:
    def __init__(self, ptr: int, numel: int = 4) -> None:
        self.ptr, self.count = ptr, numel

    def data_ptr(self) -> int:
        return self.ptr

    def numel(self) -> int:
        return self.count


class FakeModule:
    def __init__(self, **tensors: FakeTensor) -> None:
        self.tensors = tensors

    def named_parameters(self) -> list[tuple[str, FakeTensor]]:
        return [(k, v) for k, v in self.tensors.items() if k != "running_mean"]

    def named_buffers(self) -> list[tuple[str, FakeTensor]]:
        return [(k, v) for k, v in self.tensors.items() if k == "running_mean"]


def test_shared_tensors_finds_parameters_and_buffers_held_by_both() -> None:
    reference = FakeModule(weight=FakeTensor(1), bias=FakeTensor(2), running_mean=FakeTensor(3))
    shared = FakeModule(weight=FakeTensor(1), bias=FakeTensor(9), running_mean=FakeTensor(3))
    assert results.shared_tensors(reference, shared) == ["running_mean", "weight"]
    twin = FakeModule(weight=FakeTensor(7), bias=FakeTensor(8), running_mean=FakeTensor(9))
    assert results.shared_tensors(reference, twin) == []
    empty = FakeModule(weight=FakeTensor(0, numel=0))
    assert results.shared_tensors(FakeModule(weight=FakeTensor(0, numel=0)), empty) == []


def test_floor_groups_by_package_and_lists_nvidia_libraries() -> None:
    site = "/opt/venv/lib/python3.11/site-packages"
    files = {f"{site}/torch/lib/libtorch_cuda.so": 900, f"{site}/torch/lib/libc10.so": 100,
             f"{site}/nvidia/cudnn/lib/libcudnn.so.9": 50,
             f"{site}/nvidia/cublas/lib/libcublas.so.12": 70,
             "/usr/lib/x86_64-linux-gnu/libc.so.6": 2000}
    assert floor.by_package(files) == {"torch": 1000, "nvidia/cublas": 70, "nvidia/cudnn": 50}
    assert [lib["file"] for lib in floor.nvidia_libs(files)] == ["libcublas.so.12",
                                                                 "libcudnn.so.9"]
    assert floor.package_of("/usr/lib/python3/dist-packages/numpy/core/x.so") == "numpy"
    assert floor.package_of("/usr/lib/libc.so.6") is None


def test_wire_format_round_trips_json_and_binary() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("aiohttp")
    from ptc_checks import serving

    tensor = {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.5]}
    body, headers = serving.encode([tensor], ["y"], binary=True)
    length = int(headers[serving.HEADER_LENGTH])
    header = json.loads(body[:length])
    assert header["inputs"][0]["parameters"] == {"binary_data_size": 16}
    assert header["outputs"] == [{"name": "y", "parameters": {"binary_data": True}}]
    raw = np.asarray(tensor["data"], dtype="<f4").tobytes()
    assert body[length:] == raw
    answer = json.dumps({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2],
                                      "parameters": {"binary_data_size": 16}}]}).encode()
    doc, arrays = serving.decode(answer + raw, str(len(answer)))
    assert arrays["y"].tolist() == [[1.0, 2.0], [3.0, 4.5]]
    plain, _ = serving.encode([tensor], ["y"], binary=False)
    _, arrays = serving.decode(json.dumps({"outputs": [{**tensor, "name": "y"}]}).encode(), None)
    assert json.loads(plain)["inputs"] == [tensor]
    assert arrays["y"].shape == (2, 2)
    assert serving.percentile([5.0, 1.0, 3.0, 2.0], 50) == 2.0
    assert serving.percentile([], 99) is None
    metrics = 'ptserve_gpu_memory_allocated_bytes{device="0"} 2.5e+06\n# HELP x\n'
    assert serving.gpu_memory(metrics) == 2_500_000


@pytest.mark.parametrize("package", ["aiohttp", "numpy", "torch"])
def test_missing_package_exits_2_naming_it(tmp_path: Path, package: str) -> None:
    shadow = tmp_path / package
    shadow.mkdir()
    (shadow / "__init__.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{package}'\", name={package!r})\n")
    done = run_proof(pythonpath=[tmp_path])
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: gpu-proof needs the Python package(s) ")
    assert package in lines[0]


def test_missing_server_exits_2_saying_where_it_lives() -> None:
    env = {**os.environ, "PYTHONPATH": str(INCONTAINER)}
    done = subprocess.run([sys.executable, "-m", "ptc_checks", "gpu-proof"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "ptserve" in done.stderr or "needs the Python package" in done.stderr


def test_bad_options_exit_2(tmp_path: Path) -> None:
    assert run_proof("--report", str(tmp_path / "absent" / "r.json")).returncode == 2
    assert run_proof("--clients", "0").returncode == 2
    assert run_proof("--device", "tpu").returncode == 2
    not_a_build = run_proof("--customop-dir", str(tmp_path))
    assert not_a_build.returncode == 2
    assert "Traceback" not in not_a_build.stderr


def test_customop_folder_must_hold_a_build(tmp_path: Path) -> None:
    with pytest.raises(gpuproof.ProofError, match="missing libptc_ops.so, model.pt"):
        gpuproof.customop_folder(tmp_path)
    for name in gpuproof.CUSTOMOP_FILES:
        (tmp_path / name).write_bytes(b"")
    assert gpuproof.customop_folder(tmp_path) == tmp_path


@pytest.mark.parametrize("ok", [True, False])
def test_exit_status_report_and_summary(monkeypatch: pytest.MonkeyPatch, capsys: Any,
                                        tmp_path: Path, ok: bool) -> None:
    monkeypatch.setattr(gpuproof, "preflight", lambda device: None)
    monkeypatch.setattr(gpuproof, "run", lambda options: sample_report(ok))
    path = tmp_path / "gpu.json"
    assert cli.main(["gpu-proof", "--report", str(path)]) == (0 if ok else 1)
    assert json.loads(path.read_text())["ok"] is ok
    out = capsys.readouterr()
    assert out.out == ""
    assert "NVIDIA H200 (capability 9.0, driver 580.65.06)" in out.err
    assert "612 req/s, p50 52.0 ms, p99 64.0 ms, 0 errors" in out.err
    assert "transformer" in out.err and "(1.50x)" in out.err
    verdict = out.err.strip().splitlines()[-1]
    assert verdict.startswith("result    PASS" if ok else
                              "result    FAIL: serve drains on SIGTERM"), verdict


def test_no_gpu_is_one_sentence(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def refuse(device: str) -> None:
        raise gpuproof.ProofError("no GPU is visible to torch 2.8.0 (a CPU-only build), so "
                                  "there is nothing to prove.")

    monkeypatch.setattr(gpuproof, "preflight", refuse)
    assert cli.main(["gpu-proof"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no GPU is visible")


def test_bench_report_renders_the_gpu_section(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench import chart, cli as bench_cli, report

    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(sample_report()))
    data = {"gpu_proof": bench_cli.load_gpu_report(path), "gpu_proof_file": str(path)}
    text = "\n".join(report._gpu(data))
    assert "## GPU (from a gpu-proof report, not from these images)" in text
    assert "not the images measured above" in text
    assert "NVIDIA H200" in text and "580.65.06" in text and "2.11.0+cu130" in text
    assert "| transformer | 1 | 400.0 µs | 333.3 µs (1.20x) |" in text
    assert "| nvidia/cudnn | 1.00 GB |" in text and "`libcudnn.so.9`" in text
    assert report._gpu({}) == []
    machine = {"date": "2026-01-02", "cpu_model": "cpu", "cpu_cores": 2}
    png = tmp_path / "report.png"
    chart.render({**data, "machine": machine, "cell": "cu128-bookworm",
                  "options": {"runs": 1}}, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.json"
    bad.write_text('{"command": "versions"}')
    with pytest.raises(Exception, match="is not a report of"):
        bench_cli.load_gpu_report(bad)


# ------------------------------------------------------------- with torch


def test_cuda_checks_never_share_parameters_with_their_reference() -> None:
    """The reference stays untouched when the copy under test is converted (here to float64)."""
    torch = pytest.importorskip("torch")
    from ptc_checks import cuda, models

    model = models.seeded(models.ControlFlow).eval()
    assert results.shared_tensors(model, torch.jit.script(model)), "the pitfall itself"
    pairs = list(cuda.model_pairs("cpu"))
    assert len(pairs) == 5
    for name, reference, under_test, _ in pairs:
        assert results.shared_tensors(reference, under_test) == [], name
        under_test.double()
        dtypes = {t.dtype for t in [*reference.parameters(), *reference.buffers()]
                  if t.is_floating_point()}
        assert dtypes == {torch.float32}, name


def test_no_gpu_exits_2_for_real() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("aiohttp")
    pytest.importorskip("numpy")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    done = run_proof(timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no GPU is visible to torch")
    assert done.stderr.count("\n") == 1


def test_whole_pipeline_on_cpu(tmp_path: Path) -> None:
    """Every part for real, on the CPU (internal --device cpu), with small figures."""
    pytest.importorskip("torch")
    pytest.importorskip("aiohttp")
    path = tmp_path / "cpu.json"
    done = run_proof("--device", "cpu", "--clients", "4", "--load-seconds", "1",
                     "--latency-seconds", "0.1", "--report", str(path), timeout=900)
    report = json.loads(path.read_text())
    failed = [c for c in report["checks"] if not c["passed"]]
    assert done.returncode == 0, (failed, done.stderr[-3000:])
    assert report["ok"] is True and report["failed"] == []
    parts = {c["part"] for c in report["checks"]}
    assert {"torchscript", "serve", "latency", "floor"} <= parts
    serve = report["serve"]
    assert serve["device"] == "cpu" and serve["load"]["errors"] == 0
    assert serve["drain"]["exit_code"] == 0
    assert serve["drain"]["answered"] == serve["drain"]["requests"]
    names = {c["name"] for c in report["checks"]}
    assert "serve controlflow v1 relu_branch binary output" in names
    assert "serve controlflow default version" in names
    if "customop" in parts:
        assert "serve scaledadd v1 a_plus_alpha_b binary out" in names
    else:
        assert any("custom-operator" in s for s in report["skipped"])
    assert {r["mode"] for r in report["latency"]["results"]} == {"eager", "script", "trace",
                                                                 "freeze"}
    assert report["floor"]["packages"]["torch"] > 0
    assert "result    PASS" in done.stderr
