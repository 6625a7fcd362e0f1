"""Command line of the benchmarks: `python -m bench [--only PARTS] [--runs N] ...`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import docker
import docker.errors

from pytorch_cuda.core import gitinfo
from pytorch_cuda.build.engine import ensure_engine
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.matrix import load_matrix
from pytorch_cuda.core.paths import VERSIONS
from pytorch_cuda.core.progress import human_bytes, say

from . import builds, facts, inference, report, server, sizes, startup
from .session import BENCH_LABEL, BenchError, Session

PARTS = ("size", "startup", "inference", "server", "build")  # the order they run in
OUT = Path(__file__).resolve().parent


def _parts(text: str | None) -> list[str]:
    if not text:
        return list(PARTS)
    asked = {p.strip() for p in text.split(",") if p.strip()}
    unknown = sorted(asked - set(PARTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown part {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    return [p for p in PARTS if p in asked]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure what the default cell's images cost (build time, size) and how "
                    "fast they run (startup, inference, model server); write bench/report.md, "
                    "report.json and report.png.")
    parser.add_argument("--only", type=_parts, default=_parts(None), metavar="PARTS",
                        help=f"comma-separated parts to run (default: all): {','.join(PARTS)}; "
                             "build always runs last")
    parser.add_argument("--runs", type=_positive, default=5,
                        help="runs of each figure (build: no-op rebuilds only); default 5")
    parser.add_argument("--build-runs", type=_positive, default=1,
                        help="runs of the cold, naive and dev-change builds (minutes each); "
                             "default 1")
    parser.add_argument("--requests", type=_positive, default=2000,
                        help="requests per server round; default 2000")
    parser.add_argument("--clients", type=_positive, default=32,
                        help="concurrent server clients; default 32")
    parser.add_argument("--gpu-report", type=Path, metavar="FILE",
                        help="a `python -m ptc_checks gpu-proof` report to add as the GPU section "
                             "(figures of the machine and torch it ran on, not of the images)")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="folder of report.md, report.json and report.png (default: bench/)")
    return parser


def load_gpu_report(path: Path) -> dict:
    """A gpu-proof report (JSON); UserError naming the file when it is not one."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the GPU report {path}: {exc}") from None
    if not isinstance(report, dict) or report.get("command") != "gpu-proof" or not isinstance(
            report.get("machine"), dict):
        raise UserError(f"{path} is not a report of `python -m ptc_checks gpu-proof`")
    return report


def _other_containers(client: docker.DockerClient) -> int:
    """Running containers this run did not start (other work sharing the engine)."""
    running = client.containers.list(filters={"status": "running"})
    return sum(1 for c in running if BENCH_LABEL not in (c.labels or {}))


def _run_part(part: str, session: Session, args: argparse.Namespace) -> dict:
    if part == "size":
        return sizes.measure(session)
    if part == "startup":
        return startup.measure(session, args.runs)
    if part == "inference":
        return inference.measure(session, args.runs)
    if part == "server":
        return server.measure(session, args.runs, args.requests, args.clients)
    return builds.measure(session, args.runs, args.build_runs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        gpu_report = load_gpu_report(args.gpu_report) if args.gpu_report else None
        cell = load_matrix(VERSIONS).default_cell
        client = ensure_engine()
        session = Session(client, cell)
        session.require_images()
    except (UserError, BenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data: dict = {
        "parts": args.only, "cell": cell.id, "revision": gitinfo.revision(),
        "options": {"runs": args.runs, "build_runs": args.build_runs,
                    "requests": args.requests, "clients": args.clients},
        "machine": facts.machine(client),
        "images": {i.variant: {"ref": i.ref(), "id": session.image_id(i.ref())}
                   for i in (session.dev, session.prod)},
        "load_average_start": facts.load_average(),
        "other_containers_start": _other_containers(client),
        "seconds": {}, "failures": {},
    }
    say(f"benchmarking {cell.id}: {', '.join(args.only)} ({args.runs} runs"
        + (f", {args.build_runs} build run(s)" if "build" in args.only else "") + ")")
    if data["other_containers_start"]:
        say(f"note: {data['other_containers_start']} other container(s) are running on this "
            "engine; figures may be noisy")
    interrupted = False
    try:
        session.remove_leftovers()
        for part in args.only:
            say(f"== {part} ==")
            started = time.monotonic()
            try:
                data[part] = _run_part(part, session, args)
            except (BenchError, UserError, docker.errors.DockerException) as exc:
                data["failures"][part] = str(exc).strip().splitlines()[0]
                say(f"{part} failed: {exc}")
            data["seconds"][part] = round(time.monotonic() - started, 1)
            say(f"{part} took {data['seconds'][part]:.0f} s")
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: removing what this run made")
    finally:
        session.cleanup()
    if interrupted:
        return 130
    data["load_average_end"] = facts.load_average()
    data["other_containers_end"] = _other_containers(client)
    before = (data["load_average_start"] or [0.0])[0]
    cores = data["machine"]["cpu_cores"] or 1
    if before > cores / 2 or data["other_containers_start"] or data["other_containers_end"]:
        session.notes.append(f"other work shared the machine (1-minute load average {before:.1f} "
                             f"on {cores} cores when this run started; other containers running: "
                             f"{data['other_containers_start']} at start, "
                             f"{data['other_containers_end']} at end), so timings are noisy; "
                             "ratios from the same run are the figures to trust most")
    data["notes"] = session.notes
    if gpu_report is not None:
        data["gpu_proof"], data["gpu_proof_file"] = gpu_report, str(args.gpu_report)
    paths = report.write(data, args.out)
    for path in paths:
        say(f"wrote {path} ({human_bytes(path.stat().st_size)})")
    if data["failures"]:
        print(f"error: {len(data['failures'])} part(s) failed: "
              + "; ".join(f"{k}: {v}" for k, v in data["failures"].items()), file=sys.stderr)
        return 1
    return 0
