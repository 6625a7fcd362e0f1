"""Commands that need a Docker engine: build (and, as they land, test, publish, ...)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import subprocess
import sys

import docker
import docker.errors

from . import builder, locking, pkgdiff, publish, records
from .engine import ensure_engine
from .errors import UserError
from .matrix import Image, load_matrix
from .paths import ROOT


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
                                   args.quiet, args.no_cache, not args.no_normalize)
    builder.build(client, images, options)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Run the in-container test suite (pytest + testinfra) against built images."""
    matrix = load_matrix(Path(args.versions))
    if args.all:
        cells = [c for c in matrix.cells if locking.is_locked(c)]
        skipped = [c.id for c in matrix.cells if not locking.is_locked(c)]
        if skipped:
            print(f"not buildable here (no lock): {', '.join(skipped)}", file=sys.stderr)
    else:
        cells = matrix.select(args.cells) if args.cells else [matrix.default_cell]
    if args.build:
        client = ensure_engine()
        builder.build(client, matrix.images(cells),
                      builder.BuildOptions(args.ca_cert, quiet=args.quiet))
    cmd = [sys.executable, "-m", "pytest", "tests/integration", "-rs", "-p", "no:cacheprovider"]
    cmd += [f"--cell={c.id}" for c in cells]
    if args.require_gpu:
        cmd.append("--require-gpu")
    if args.k:
        cmd += ["-k", args.k]
    client = ensure_engine()
    images = {i.ref(): _image_id(client, i) for i in matrix.images(cells)}
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if code not in (0, 1):
        raise UserError(f"pytest could not run the suite (exit code {code})")
    if code == 0 and not args.k and all(images.values()):
        records.record_pass(images)
        print(f"recorded a full pass of {len(images)} image(s) in {records.RECORDS.relative_to(ROOT)}")
    return code


def cmd_publish(args: argparse.Namespace) -> int:
    """Push tested images: full tags, verified, then aliases; write the release manifest."""
    options = publish.make_options(args.registry, args.date, args.dated, args.manifest_dir)
    publish.publish(ensure_engine(), selected_images(args), options)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """List the packages added, removed and changed from one image to another."""
    return pkgdiff.show(ensure_engine(), args.image_a, args.image_b, args.json)


def _image_id(client, image: Image) -> str | None:
    try:
        return client.images.get(image.ref()).id
    except docker.errors.ImageNotFound:
        return None


def cmd_verify_repro(args: argparse.Namespace) -> int:
    """Rebuild without cache and compare image IDs; exit 1 when they differ."""
    from .verify import verify

    matrix = load_matrix(Path(args.versions))
    images = matrix.images([matrix.cell(args.cell)], args.variant)
    return 0 if verify(ensure_engine(), images, args.twice, args.against) else 1


def add_commands(sub: argparse._SubParsersAction, mirror_options: Callable, variants: Sequence[str]) -> None:
    """Register the engine-backed commands."""
    p = sub.add_parser("build", help="build images (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--variant", choices=variants)
    p.add_argument("--ca-cert", help="CA bundle for builder stages (default: the host's pip/SSL config)")
    p.add_argument("--quiet", action="store_true", help="show steps only, not their output")
    p.add_argument("--no-cache", action="store_true", help="ignore the build cache")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip normalization (faster, but not reproducible)")
    mirror_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify-repro", help="rebuild without cache and compare image IDs")
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--variant", choices=variants)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--twice", action="store_true",
                      help="build twice from scratch (default: rebuild and compare with the tagged image)")
    mode.add_argument("--against", metavar="IMAGE", help="compare with this image instead")
    p.set_defaults(func=cmd_verify_repro)

    p = sub.add_parser("test", help="in-container tests of built images (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--all", action="store_true", help="every cell buildable here")
    p.add_argument("--build", action="store_true", help="build the images first")
    p.add_argument("--require-gpu", action="store_true", help="fail, not skip, without a GPU")
    p.add_argument("--ca-cert", help="CA bundle for builder stages (with --build)")
    p.add_argument("--quiet", action="store_true", help="with --build: steps only")
    p.add_argument("-k", help="only tests matching this pytest expression")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("publish", help="push tested images to a registry (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--variant", choices=variants)
    p.add_argument("--registry", required=True, metavar="HOST[:PORT]/NAMESPACE",
                   help="where to push; credentials come from 'docker login' or "
                        "PTC_REGISTRY_USER/PTC_REGISTRY_PASSWORD")
    p.add_argument("--dated", action="store_true", help="also tag <full tag>-YYYYMMDD")
    p.add_argument("--date", metavar="YYYYMMDD",
                   help="the release date (implies --dated; default: SOURCE_DATE_EPOCH, else today, UTC)")
    p.add_argument("--manifest-dir", help="where release-<date>.json/.md go (default: .build/releases)")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("diff", help="packages added, removed and changed between two images")
    p.add_argument("image_a", metavar="IMAGE_A")
    p.add_argument("image_b", metavar="IMAGE_B")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_diff)
