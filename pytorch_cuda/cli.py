"""Command line of the build driver: `python build.py COMMAND ...`, each command one stage function."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pytorch_cuda.build import builder, wheelhouse
from pytorch_cuda.build.engine import ensure_engine
from pytorch_cuda.core.errors import UserError
from pytorch_cuda.core.paths import IMAGES, ROOT, VERSIONS
from pytorch_cuda.core.progress import say, table
from pytorch_cuda.lock import debian, locking
from pytorch_cuda.matrix import VARIANTS, Image, Matrix, load_matrix
from pytorch_cuda.publish import pkgdiff, push
from pytorch_cuda.render import dockerfiles
from pytorch_cuda.render.lint import lint
from pytorch_cuda.repro.verify import verify
from pytorch_cuda.suite import runner


def _matrix(args: argparse.Namespace) -> Matrix:
    return load_matrix(Path(args.versions))


def cmd_matrix(args: argparse.Namespace) -> int:
    """Print the cells as a table, or as JSON for CI."""
    matrix = _matrix(args)
    if args.json:
        print(matrix.json())
        return 0
    rows = [[c.id + (" *" if c.is_default else ""), matrix.torch_version, c.cuda.version,
             matrix.cudnn, c.os.python, f"{c.os.distro} {c.os.version} ({c.os.name})",
             "yes" if locking.is_locked(c) else f"no ({c.cuda.index} index)",
             ", ".join(c.image("dev").aliases + c.image("prod").aliases)]
            for c in matrix.cells]
    print(table(["cell", "torch", "cuda", "cudnn", "python", "os", "locked", "aliases"], rows))
    print("* default cell")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Write images/ (or with --check, list what differs and exit 1)."""
    files = dockerfiles.render_tree(_matrix(args))
    changed = dockerfiles.differences(files)
    if args.check:
        if changed:
            print(f"{IMAGES.relative_to(ROOT)}/ is not what the templates and matrix produce; "
                  "run 'python build.py render'. Files that differ:", file=sys.stderr)
            for path in changed:
                print(f"  images/{path}", file=sys.stderr)
            return 1
        print(f"images/ is up to date ({len(files)} files)")
        return 0
    dockerfiles.write_tree(files)
    print(f"rendered {len(files)} files into images/ ({len(changed)} changed)")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    """Lock pip environments per cell and apt pins per OS."""
    matrix = _matrix(args)
    cells = matrix.select(args.cells)
    uv = str(Path(sys.executable).with_name("uv"))
    suites = sorted({c.os.suite for c in cells if c.os.suite})
    mirrors = debian.resolve_mirrors(matrix.snapshot, suites, args.mirror, args.security_mirror,
                                     args.snapshot_mirror)
    results = []
    for os_ in {c.os.name: c.os for c in cells}.values():
        say(f"resolving apt pins for {os_.name}")
        results.append(locking.lock_apt(matrix, os_, mirrors))
    for cell in cells:
        say(f"locking {cell.id}")
        results.append(locking.lock_cell(matrix, cell, uv))
    print(table(["target", "status", "detail"], [[r.target, r.status, r.detail] for r in results]))
    skipped = [r for r in results if r.status == "skipped" and args.cells]
    if skipped:
        raise UserError(f"cell {skipped[0].target} could not be locked: {skipped[0].detail}")
    return 0


def cmd_lint(args: argparse.Namespace) -> int:
    """Run the linters; exit 1 when any finds something."""
    return 0 if lint(_matrix(args)) else 1


def selected_images(args: argparse.Namespace) -> list[Image]:
    """Images of the named cells (default cell when none), optionally one variant."""
    matrix = _matrix(args)
    cells = matrix.select(args.cells) if args.cells else [matrix.default_cell]
    return matrix.images(cells, args.variant)


def cmd_build(args: argparse.Namespace) -> int:
    """Build images and tag them."""
    images = selected_images(args)
    client = ensure_engine()
    options = builder.BuildOptions(args.ca_cert, args.mirror, args.security_mirror,
                                   args.snapshot_mirror, args.quiet, args.no_cache,
                                   not args.no_normalize, Path(args.wheelhouse))
    builder.build(client, images, options)
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    """Run the in-container test suite (pytest + testinfra) against built images."""
    matrix = _matrix(args)
    cells = runner.cells_to_test(matrix, args.cells, args.all)
    options = builder.BuildOptions(args.ca_cert, quiet=args.quiet) if args.build else None
    return runner.build_and_test(matrix, cells, options, args.require_gpu, args.k)


def cmd_publish(args: argparse.Namespace) -> int:
    """Push tested images: full tags, verified, then aliases; write the release manifest."""
    options = push.make_options(args.registry, args.date, args.dated, args.manifest_dir)
    push.publish(ensure_engine(), selected_images(args), options)
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """List the packages added, removed and changed from one image to another."""
    return pkgdiff.show(ensure_engine(), args.image_a, args.image_b, args.json)


def cmd_verify_repro(args: argparse.Namespace) -> int:
    """Rebuild without cache and compare image IDs; exit 1 when they differ."""
    matrix = _matrix(args)
    images = matrix.images([matrix.cell(args.cell)], args.variant)
    options = builder.BuildOptions(mirror=args.mirror, security_mirror=args.security_mirror,
                                   snapshot_mirror=args.snapshot_mirror, quiet=True,
                                   no_cache=True)
    return 0 if verify(ensure_engine(), images, args.twice, args.against, options) else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__)
    parser.add_argument("--versions", default=str(VERSIONS), help="the matrix file")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("matrix", help="show the cells")
    p.add_argument("--json", action="store_true", help="machine-readable, for CI")
    p.set_defaults(func=cmd_matrix)

    p = sub.add_parser("render", help="render images/ from templates/ and the matrix")
    p.add_argument("--check", action="store_true", help="fail if images/ is out of date")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("lock", help="lock Python packages (with hashes) and apt versions")
    p.add_argument("cells", nargs="*", metavar="CELL")
    _mirror_options(p)
    p.set_defaults(func=cmd_lock)

    p = sub.add_parser("lint", help="hadolint, ruff, zizmor and render --check")
    p.set_defaults(func=cmd_lint)

    p = sub.add_parser("build", help="build images (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--variant", choices=VARIANTS)
    p.add_argument("--ca-cert", help="CA bundle for downloading wheels on this host "
                   "(default: the host's pip/SSL config; never sent to a build)")
    p.add_argument("--wheelhouse", default=str(wheelhouse.DEFAULT), metavar="DIR",
                   help="where the locked wheels are kept and served to builds from "
                        "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="show steps only, not their output")
    p.add_argument("--no-cache", action="store_true", help="ignore the build cache")
    p.add_argument("--no-normalize", action="store_true",
                   help="skip normalization (faster, but not reproducible)")
    _mirror_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("verify-repro", help="rebuild without cache and compare image IDs")
    p.add_argument("cell", metavar="CELL")
    p.add_argument("--variant", choices=VARIANTS)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--twice", action="store_true",
                      help="build twice from scratch (default: rebuild and compare with the tagged image)")
    mode.add_argument("--against", metavar="IMAGE",
                      help="compare with this image instead (pulled when not on the engine)")
    _mirror_options(p)
    p.set_defaults(func=cmd_verify_repro)

    p = sub.add_parser("test", help="in-container tests of built images (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--all", action="store_true", help="every cell buildable here")
    p.add_argument("--build", action="store_true", help="build the images first")
    p.add_argument("--require-gpu", action="store_true", help="fail, not skip, without a GPU")
    p.add_argument("--ca-cert", help="CA bundle for downloading wheels on this host (with --build)")
    p.add_argument("--quiet", action="store_true", help="with --build: steps only")
    p.add_argument("-k", help="only tests matching this pytest expression")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("publish", help="push tested images to a registry (default: the default cell)")
    p.add_argument("cells", nargs="*", metavar="CELL")
    p.add_argument("--variant", choices=VARIANTS)
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
    return parser


def _mirror_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group()
    source.add_argument("--snapshot-mirror", metavar="URL",
                        help="base URL of a Debian snapshot mirror: read the archive as of "
                             f"archive.snapshot in versions.yaml (default: ${debian.SNAPSHOT_ENV})")
    source.add_argument("--mirror", help="a live Debian archive URL (default: the host's apt sources)")
    p.add_argument("--security-mirror", help="a live Debian security archive URL")


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input exits 2 with one sentence."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
