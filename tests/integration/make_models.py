#!/usr/bin/env python3
"""Write a TorchScript model repository and reference outputs for the model-server tests.

Usage: python make_models.py OUTDIR [--broken | --spin | --batching]

OUTDIR gets ``controlflow/`` (versions 1 and 2), ``smallconv/`` (version 1) and
``reference.json``: for each model, its default version and cases of inputs with
the outputs the eager (unscripted) module gave. ``--broken`` adds two models
that fail to load: ``broken_corrupt`` (model.pt is not a TorchScript archive)
and ``broken_customop`` (uses a custom operator whose library is not shipped).
``--spin`` writes only ``spin`` (busy for ``n`` matrix products: a request that
stays in flight a while) and ``fill`` (an answer of ``n`` values); ``--batching`` writes only the conv net as ``plain``,
``batched`` and ``badbatch`` (dynamic batching off, on, and badly set).
The models and the repository are defined once, in ``ptc_checks`` (tests/incontainer):
from a checkout it is found next to this file; elsewhere (a container) it must be on
PYTHONPATH. Needs torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHECKS = Path(__file__).resolve().parent.parent / "incontainer"  # a checkout; "/" in a container


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--broken", action="store_true", help="also write models that fail to load")
    only.add_argument("--spin", action="store_true", help="write only the spin and fill models")
    only.add_argument("--batching", action="store_true",
                      help="write only the conv net unbatched, batched and badly batched")
    args = parser.parse_args()
    if CHECKS.is_dir() and str(CHECKS) not in sys.path:
        sys.path.insert(0, str(CHECKS))
    try:
        from ptc_checks import modelrepo, serving
    except ModuleNotFoundError as exc:
        hint = " (put tests/incontainer on PYTHONPATH)" if exc.name == "ptc_checks" else ""
        print(f"error: make_models.py needs the Python package {exc.name}{hint}", file=sys.stderr)
        return 2
    if args.spin:
        serving.add_spin_model(args.outdir)
        serving.add_fill_model(args.outdir)
        print(f"wrote {serving.SPIN_MODEL} and {serving.FILL_MODEL} to {args.outdir}")
    elif args.batching:
        print(f"wrote {', '.join(modelrepo.write_batching(args.outdir))} to {args.outdir}")
    else:
        reference = modelrepo.write(args.outdir, broken=args.broken)
        print(f"wrote {', '.join(sorted(reference))} and reference.json to {args.outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
