"""Command line: ``python -m ptc_checks <command> [options]``; prints one JSON object.

Exit status: 0 when the JSON result was produced (check failures are in the
result: ``ok`` and each check's ``passed``), 1 when a command crashed (the JSON
then holds ``error``), 2 on usage errors.

``gpu-proof`` differs: it writes its JSON report to ``--report FILE`` (or stdout)
and a summary to stderr, and exits 0 when every check passed, 1 when one failed
(named in the summary), 2 when it cannot run here (no GPU, a missing package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import versions

DEVICES = ("cpu", "cuda")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per check family."""
    parser = argparse.ArgumentParser(prog="python -m ptc_checks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    facts = commands.add_parser(
        "versions", help="report versions, packages, OS, NVIDIA env, libcuda files"
    )
    facts.add_argument(
        "--scan-root", default="/", help="where to look for libcuda.so* (default: /)"
    )

    script = commands.add_parser(
        "torchscript", help="TorchScript checks on CPU (and CUDA)"
    )
    script.add_argument("--device", choices=DEVICES, default="cpu")

    customop = commands.add_parser(
        "customop", help="custom C++ operator: build (dev) or run (prod)"
    )
    actions = customop.add_subparsers(dest="action", required=True)
    build = actions.add_parser(
        "build", help="compile the operator, save model and reference into --out"
    )
    build.add_argument("--out", required=True, type=Path)
    run = actions.add_parser(
        "run", help="load the library and model from --dir and check the output"
    )
    run.add_argument("--dir", required=True, type=Path)
    run.add_argument(
        "--no-load",
        action="store_true",
        help="do not load the library: model load must fail",
    )

    everything = commands.add_parser(
        "all", help="versions + torchscript, optionally compared with pins"
    )
    everything.add_argument("--device", choices=DEVICES, default="cpu")
    everything.add_argument("--expect", type=Path, help="JSON file of expected pins")
    everything.add_argument(
        "--scan-root", default="/", help="where to look for libcuda.so* (default: /)"
    )
    proof = commands.add_parser(
        "gpu-proof",
        help="prove a GPU machine end to end: CUDA checks, model server, latency, GPU floor",
    )
    proof.add_argument("--report", type=Path, help="write the JSON report here (default: stdout)")
    proof.add_argument("--clients", type=_positive_int, default=32,
                       help="concurrent clients of the load (default 32)")
    proof.add_argument("--load-seconds", type=_positive_float, default=5.0,
                       help="length of the load (default 5)")
    proof.add_argument("--latency-seconds", type=_positive_float, default=2.0,
                       help="timing budget per model and batch size (default 2)")
    proof.add_argument("--customop-dir", type=Path,
                       help="a 'customop build' output (e.g. from the dev image) to serve "
                            "instead of building the operator here")
    # Internal: run the same pipeline on the CPU (the unit tests); never a fallback.
    proof.add_argument("--device", choices=DEVICES, default="cuda", help=argparse.SUPPRESS)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def run_gpu_proof(args: argparse.Namespace) -> int:
    """The ``gpu-proof`` command: report to ``--report`` or stdout, summary to stderr."""
    from . import gpuproof

    if args.report is not None and not args.report.parent.is_dir():
        print(f"error: the folder of --report {args.report} does not exist.", file=sys.stderr)
        return 2
    try:
        gpuproof.preflight(args.device)
        folder = args.customop_dir and gpuproof.customop_folder(args.customop_dir)
        options = gpuproof.Options(
            device=args.device, clients=args.clients, load_seconds=args.load_seconds,
            latency_seconds=args.latency_seconds, customop_dir=folder or None)
        with stdout_to_stderr():
            report = gpuproof.run(options)
    except gpuproof.ProofError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one sentence for people, never a traceback
        print(f"error: gpu-proof stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    if args.report is None:
        print(text)
    else:
        args.report.write_text(text + "\n", encoding="utf-8")
    print(gpuproof.summary(report), file=sys.stderr)
    return 0 if report["ok"] else 1


def run_versions(scan_root: str) -> dict[str, Any]:
    """The ``versions`` command."""
    return {"command": "versions", "ok": True, **versions.collect(scan_root)}


def run_torchscript(device: str) -> dict[str, Any]:
    """The ``torchscript`` command."""
    from . import torchscript

    return torchscript.run(device)


def run_all(
    device: str, expect: dict[str, Any] | None, scan_root: str
) -> dict[str, Any]:
    """The ``all`` command: versions + torchscript, pins compared when ``expect`` is given."""
    started = time.monotonic()
    facts = run_versions(scan_root)
    script = guard("torchscript", lambda: run_torchscript(device))
    pins = (
        versions.compare_pins(expect, facts)
        if expect is not None
        else versions.report_pins(facts)
    )
    return {
        "command": "all",
        "device": device,
        "ok": bool(script["ok"]) and versions.pins_ok(pins),
        "pins": pins,
        "pins_compared": expect is not None,
        "versions": facts,
        "torchscript": script,
        "elapsed_s": round(time.monotonic() - started, 3),
    }


def guard(command: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a command; a crash becomes ``{"command", "ok": false, "error"}``."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported in the JSON result
        return {
            "command": command,
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python and child processes) to stderr meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def dispatch(args: argparse.Namespace, expect: dict[str, Any] | None) -> dict[str, Any]:
    """Run the parsed command and return its result."""
    if args.command == "versions":
        return guard("versions", lambda: run_versions(args.scan_root))
    if args.command == "torchscript":
        return guard("torchscript", lambda: run_torchscript(args.device))
    if args.command == "all":
        return guard("all", lambda: run_all(args.device, expect, args.scan_root))
    from . import customop

    if args.action == "build":
        return guard("customop build", lambda: customop.build(args.out))
    return guard("customop run", lambda: customop.run(args.dir, load=not args.no_load))


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the command with stdout kept clean, print its JSON result."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "gpu-proof":
        return run_gpu_proof(args)
    expect = None
    if getattr(args, "expect", None) is not None:
        try:
            expect = versions.load_expect(args.expect)
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))
    with stdout_to_stderr():
        result = dispatch(args, expect)
    print(json.dumps(result, indent=2))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
