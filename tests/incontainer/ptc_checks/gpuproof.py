"""``gpu-proof``: prove a GPU machine end to end with its own Python and torch.

In one run, no Docker and no network: every TorchScript check on CUDA (the CPU
ones too); the model server on CUDA against eager CPU reference outputs (JSON
and binary tensors, several models and versions, the custom-operator model), a
short concurrent load and a SIGTERM drain; TorchScript vs eager latency per
model and batch size; and the files a fresh process maps for TorchScript
inference on the GPU (the GPU size floor). The result is one JSON report and a
readable summary. Nothing falls back to the CPU: without a GPU it stops at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import versions
from .results import Check, check, guarded

REPORT_VERSION = 1
# Imported before anything runs: what the proof and the model server need.
REQUIRED = ("torch", "numpy", "aiohttp", "ptserve.main")
HINTS = {"ptserve": " (the model server: put the checkout's server/ folder on PYTHONPATH)"}
MIN_TORCH = (2, 8)
BATCHES = (1, 32)
BUILD_TIMEOUT_S = 600
FLOOR_TIMEOUT_S = 300
CUSTOMOP_MODEL = "scaledadd"
CUSTOMOP_FILES = ("libptc_ops.so", "model.pt", "reference.json")
LATENCY_TOLERANCE = 1e-3  # every variant's output vs eager's, same device, float32
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")


class ProofError(Exception):
    """The proof cannot run here (exit 2); the message is one sentence for people."""


@dataclass(frozen=True)
class Options:
    """What to run and how long; the defaults fit well inside 3 minutes on one GPU."""

    device: str = "cuda"
    clients: int = 32
    load_seconds: float = 5.0
    latency_seconds: float = 2.0
    latency_rounds: int = 5
    customop_dir: Path | None = None


def preflight(device: str) -> None:
    """Raise ProofError when a package is missing, torch is too old or no GPU is visible."""
    missing = []
    for module in REQUIRED:
        try:
            with warnings.catch_warnings():  # e.g. torch's warning when numpy is missing
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ModuleNotFoundError as exc:
            name = exc.name or module
            missing.append(name + HINTS.get(name, ""))
        except Exception as exc:  # noqa: BLE001 - a broken install is one sentence too
            raise ProofError(f"importing {module} failed: {type(exc).__name__}: {exc}") from None
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        raise ProofError(f"gpu-proof needs the Python package(s) {names}, "
                         f"which {sys.executable} cannot import.")
    import torch

    found = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if found < MIN_TORCH:
        raise ProofError(f"gpu-proof needs torch {'.'.join(map(str, MIN_TORCH))} or later, "
                         f"found {torch.__version__}.")
    if device == "cuda" and not torch.cuda.is_available():
        build = (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                 else "a CPU-only build")
        raise ProofError(f"no GPU is visible to torch {torch.__version__} ({build}, "
                         f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}), "
                         "so there is nothing to prove.")


def customop_folder(folder: Path) -> Path:
    """``folder`` when it holds a ``customop build`` result, else ProofError."""
    absent = [name for name in CUSTOMOP_FILES if not (folder / name).is_file()]
    if absent:
        raise ProofError(f"{folder} is not the output of 'customop build' "
                         f"(missing {', '.join(absent)}).")
    return folder


def driver_version() -> str | None:
    """The NVIDIA driver version, from nvidia-smi or /proc/driver/nvidia/version."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            done = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=60, check=False)
            if done.returncode == 0 and done.stdout.strip():
                return done.stdout.split()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        text = Path("/proc/driver/nvidia/version").read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d[\d.]+)", text)
    return match.group(1) if match else None


def machine(device: str) -> dict[str, Any]:
    """Where this runs and what with: host or container, Python, torch, the GPU, the driver."""
    import torch

    info = sys.version_info
    facts: dict[str, Any] = {
        "where": "container" if any(map(os.path.exists, CONTAINER_MARKERS)) else "host",
        "hostname": socket.gethostname(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "os": versions.read_os_release(),
        "python": f"{info.major}.{info.minor}.{info.micro}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": device,
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        facts.update({
            "gpu": properties.name,
            "gpu_count": torch.cuda.device_count(),
            "capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_bytes": properties.total_memory,
            "driver": driver_version(),
        })
    return facts


def part(name: str, checks: list[Check]) -> list[Check]:
    """Tag checks with the part of the proof they belong to."""
    return [{**c, "part": name} for c in checks]


def child_pythonpath() -> str:
    """PYTHONPATH for child processes: where ptc_checks and ptserve were found, then the rest."""
    roots = []
    for name in ("ptc_checks", "ptserve"):
        spec = importlib.util.find_spec(name)
        root = Path(spec.origin).resolve().parent.parent if spec and spec.origin else None
        if root is not None and root.name not in ("site-packages", "dist-packages"):
            roots.append(str(root))  # installed packages are found without help
    roots += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(roots))


def run_json(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``python -m ...`` in a fresh process and parse the JSON it prints."""
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"python -m {' '.join(args)} exited {done.returncode}: {tail}")
    return json.loads(done.stdout)


def start_customop_build(options: Options, work: Path) -> subprocess.Popen[str] | str | None:
    """Start ``customop build`` in the background; a reason string when it cannot run here."""
    if options.customop_dir is not None:
        return None
    absent = [tool for tool in ("g++", "ninja") if shutil.which(tool) is None]
    if absent:
        return (f"{' and '.join(absent)} not on PATH: the custom-operator library cannot be "
                "built here (build it in the dev image and pass --customop-dir)")
    env = {**os.environ, "PYTHONPATH": child_pythonpath()}
    return subprocess.Popen(
        [sys.executable, "-m", "ptc_checks", "customop", "build", "--out", str(work / "customop")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)


def finish_customop_build(build: subprocess.Popen[str], work: Path) -> tuple[list[Check], Path]:
    """Wait for the background build; its checks, and the folder it wrote."""
    try:
        out, _ = build.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        build.kill()
        build.communicate()
        return [check("custom op build", False, f"no result within {BUILD_TIMEOUT_S} s")], work
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        return [check("custom op build", False, f"exit {build.returncode}, no JSON result")], work
    checks = result.get("checks") or [check("custom op build", False, str(result.get("error")))]
    return checks, work / "customop"


def add_customop_model(folder: Path, repository: Path) -> dict[str, Any]:
    """Put the built library and model into the repository; return its reference entry."""
    import torch

    from . import modelrepo

    model_dir = modelrepo.write_config(repository, CUSTOMOP_MODEL, {
        "inputs": [modelrepo.spec("a", [-1, 5]), modelrepo.spec("b", [-1, 5])],
        "outputs": [modelrepo.spec("out", [-1, 5])],
    })
    shutil.copyfile(folder / CUSTOMOP_FILES[0], model_dir / CUSTOMOP_FILES[0])
    (model_dir / "1").mkdir(exist_ok=True)
    shutil.copyfile(folder / CUSTOMOP_FILES[1], model_dir / "1" / CUSTOMOP_FILES[1])
    ref = json.loads((folder / CUSTOMOP_FILES[2]).read_text(encoding="utf-8"))
    a, b, out = (torch.tensor(ref[key]) for key in ("a", "b", "expected"))
    return {"default_version": "1",
            "cases": [modelrepo.case("a_plus_alpha_b", 1, {"a": a, "b": b}, {"out": out})]}


def torchscript_part(options: Options, report: dict[str, Any]) -> list[Check]:
    """Every TorchScript check of ``ptc_checks``: the CPU ones and, on CUDA, the CUDA ones."""
    from . import torchscript

    script = torchscript.run(options.device)
    report["torchscript"] = {k: script[k] for k in ("settings", "tolerances", "cuda")}
    return part("torchscript", script["checks"])


def serve_part(options: Options, work: Path, build: subprocess.Popen[str] | str | None,
               report: dict[str, Any]) -> list[Check]:
    """The model server against the repository and its reference outputs."""
    from . import modelrepo, serving

    checks: list[Check] = []
    repository = work / "models"
    reference = modelrepo.write(repository)
    folder = options.customop_dir
    if isinstance(build, str):
        report["skipped"].append(f"custom-operator model: {build}")
    elif build is not None:
        built, folder = finish_customop_build(build, work)
        checks += part("customop", built)
        folder = folder if all(c["passed"] for c in built) else None
    if folder is not None:
        reference[CUSTOMOP_MODEL] = add_customop_model(folder, repository)
    served, report["serve"] = serving.run(repository, reference, options.device, options.clients,
                                          options.load_seconds, child_pythonpath())
    return checks + part("serve", served)


def latency_part(options: Options, report: dict[str, Any]) -> list[Check]:
    """Eager vs script, trace and freeze per model and batch size on the device."""
    from . import latency

    results = []
    for name in latency.MODELS:
        for batch in BATCHES:
            results += latency.bench_one(name, batch, options.device, options.latency_rounds,
                                         options.latency_seconds)
    report["latency"] = {
        "device": options.device, "rounds": options.latency_rounds,
        "seconds": options.latency_seconds,
        "models": {name: spec[2] for name, spec in latency.MODELS.items()},
        "results": latency.with_speedups(results),
    }
    checks = []
    for name in latency.MODELS:
        for batch in BATCHES:
            rows = [r for r in results if (r["model"], r["batch"]) == (name, batch)]
            worst = max(r["max_abs_diff_vs_eager"] for r in rows)
            checks.append(check(
                f"latency {name} batch {batch} variants match eager", worst <= LATENCY_TOLERANCE,
                f"largest difference from eager {worst:.2g} (limit {LATENCY_TOLERANCE:g})"))
    return part("latency", checks)


def floor_part(options: Options, report: dict[str, Any]) -> list[Check]:
    """The files a fresh process maps for TorchScript inference on the device."""
    from . import floor

    data = run_json(["ptc_checks.floor", "--device", options.device], FLOOR_TIMEOUT_S)
    mapped = data["mapped"]
    packages = floor.by_package(mapped)
    report["floor"] = {
        "device": data["device"],
        "mapped_files": len(mapped),
        "mapped_bytes": sum(mapped.values()),
        "site_packages_bytes": sum(packages.values()),
        "packages": packages,
        "nvidia_libs": floor.nvidia_libs(mapped),
        "imported_bytes": sum(data["imported"].values()),
        "triton_imported": data["triton_imported"],
    }
    detail = f"{len(mapped)} files mapped, {sum(packages.values())} bytes under site-packages"
    return part("floor", [check("floor measured", bool(packages), detail)])


def run(options: Options) -> dict[str, Any]:
    """Run every part; a part that crashes becomes a failed check, never a traceback."""
    import tempfile

    started = time.monotonic()
    report: dict[str, Any] = {"command": "gpu-proof", "report_version": REPORT_VERSION,
                              "machine": machine(options.device), "skipped": [], "seconds": {}}
    checks: list[Check] = []

    def timed(name: str, run_part: Callable[[], list[Check]]) -> None:
        begun = time.monotonic()
        checks.extend(guarded(name, run_part))
        report["seconds"][name] = round(time.monotonic() - begun, 1)

    with tempfile.TemporaryDirectory(prefix="ptc-gpu-proof-") as tmp:
        work = Path(tmp)
        build = start_customop_build(options, work)
        try:
            timed("torchscript", lambda: torchscript_part(options, report))
            timed("serve", lambda: serve_part(options, work, build, report))
        finally:
            if isinstance(build, subprocess.Popen) and build.poll() is None:
                build.kill()
                build.wait()
    timed("latency", lambda: latency_part(options, report))
    timed("floor", lambda: floor_part(options, report))
    failed = [c["name"] for c in checks if not c["passed"]]
    report.update({"ok": bool(checks) and not failed, "failed": failed, "checks": checks,
                   "elapsed_s": round(time.monotonic() - started, 1)})
    return report


# ------------------------------------------------------------------ summary


def _mb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} us"


def summary(report: dict[str, Any]) -> str:
    """The report as a short readable table."""
    m = report["machine"]
    gpu = (f"{m['gpu']} (capability {m['capability']}, driver {m['driver'] or '?'})"
           if m.get("gpu") else f"device {m['device']}")
    lines = [f"gpu-proof on the {m['where']} {m['hostname']}: {gpu}; torch {m['torch']} "
             f"(CUDA {m['cuda']}, cuDNN {m['cudnn']}), Python {m['python']}"]
    counts: dict[str, list[int]] = {}
    for c in report["checks"]:
        counts.setdefault(c.get("part", c["name"]), [0, 0])[0 if c["passed"] else 1] += 1
    lines.append("checks    " + ", ".join(f"{p} {ok}/{ok + bad}" for p, (ok, bad) in counts.items()))
    serve = report.get("serve") or {}
    if "ready_s" in serve:
        lines.append(f"server    ready in {serve['ready_s']:.1f} s on {serve['device']}; models "
                     f"{', '.join(serve['models'])}")
    if serve.get("load"):
        lo = serve["load"]
        lines.append(f"load      {lo['clients']} clients for {lo['seconds']:.1f} s: "
                     f"{lo['req_per_s']:.0f} req/s, p50 {lo['p50_ms'] or 0:.1f} ms, "
                     f"p99 {lo['p99_ms'] or 0:.1f} ms, {lo['errors']} errors")
    if serve.get("drain"):
        dr = serve["drain"]
        lines.append(f"drain     SIGTERM with {dr['in_flight_at_sigterm']} slow requests in flight: "
                     f"{dr['answered']}/{dr['requests']} answered, exit {dr['exit_code']} "
                     f"after {dr['seconds']:.2f} s")
    lat = report.get("latency")
    if lat:
        lines.append(f"latency   median per call on {lat['device']} (speed-up vs eager)")
        lines.append(f"  {'model':<12}{'batch':>6}  {'eager':>9}  " + "  ".join(
            f"{mode:>18}" for mode in ("script", "trace", "freeze")))
        rows: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        for r in lat["results"]:
            rows.setdefault((r["model"], r["batch"]), {})[r["mode"]] = r
        for (model, batch), by_mode in rows.items():
            cells = [f"{_us(by_mode[mode]['median_us'])} ({by_mode[mode]['speedup_vs_eager']:.2f}x)"
                     for mode in ("script", "trace", "freeze")]
            lines.append(f"  {model:<12}{batch:>6}  {_us(by_mode['eager']['median_us']):>9}  "
                         + "  ".join(f"{cell:>18}" for cell in cells))
    fl = report.get("floor")
    if fl:
        top = ", ".join(f"{name} {_mb(size)}" for name, size in list(fl["packages"].items())[:6])
        lines.append(f"floor     {_mb(fl['site_packages_bytes'])} mapped under site-packages "
                     f"({top}); {len(fl['nvidia_libs'])} NVIDIA libraries; triton imported: "
                     f"{'yes' if fl['triton_imported'] else 'no'}")
    for reason in report["skipped"]:
        lines.append(f"skipped   {reason}")
    verdict = "PASS" if report["ok"] else "FAIL: " + "; ".join(report["failed"])
    took = ", ".join(f"{name} {sec:.0f} s" for name, sec in report["seconds"].items())
    lines.append(f"result    {verdict} ({len(report['checks'])} checks, "
                 f"{report['elapsed_s']:.0f} s: {took})")
    return "\n".join(lines)
