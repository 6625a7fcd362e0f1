"""Latency of the check models in eager mode and as TorchScript (script, trace, freeze).

Runs inside the prod image, mounted read-only next to the project's check code
(``ptc_checks`` on PYTHONPATH, where the models and the timing live:
``ptc_checks.latency``); prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ptc_checks.latency import MODELS, bench_one, with_speedups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timing budget per model, batch size and device (all variants)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for name in args.models:
            for batch in args.batch:
                print(f"{device} {name} batch {batch}", file=sys.stderr, flush=True)
                results += bench_one(name, batch, device, args.rounds, args.seconds)
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "devices": devices,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "models": {name: spec[2] for name, spec in MODELS.items() if name in args.models},
        "results": with_speedups(results),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
