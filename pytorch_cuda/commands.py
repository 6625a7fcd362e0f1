"""Commands that need a Docker engine: build (and, as they land, test, publish, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from . import builder
from .engine import ensure_engine
from .matrix import Image, load_matrix


def selected_images(args: argparse.Namespace) -> list[Image]:
    """Images of the named cells (default cell when none), optionally one variant."""
    matrix = load_matrix(Path(args.versions))
    cells = matrix.select(args.cells) if args.cells else [matrix.default_cell]
    return matrix.images(cells, args.variant)


def cmd_build(args: argparse.Namespace) -> int:
    """Build images and tag them."""
    images = selected_images(args)
    client = ensure_engine()
    options = builder.BuildOptions(args.ca_cert, args.mirror, args.security_mirror,
                                   args.quiet, args.no_cache)
    builder.build(client, images, options)
    return 0


def add_commands(sub: argparse._SubParsersAction, mirror_options: Callable, variants: Sequence[str]) -> None:
    """Register the engine-backed commands."""
    p = sub.add_parser("build", help="build images (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--variant", choices=variants)
    p.add_argument("--ca-cert", help="CA bundle for builder stages (default: the host's pip/SSL config)")
    p.add_argument("--quiet", action="store_true", help="show steps only, not their output")
    p.add_argument("--no-cache", action="store_true", help="ignore the build cache")
    mirror_options(p)
    p.set_defaults(func=cmd_build)
