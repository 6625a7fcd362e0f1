"""Command line of the build driver: `python build.py COMMAND ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import debian, locking, render
from .errors import UserError
from .matrix import VARIANTS, Matrix, load_matrix
from .paths import IMAGES, ROOT, VERSIONS
from .progress import say, table


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
    files = render.render_tree(_matrix(args))
    changed = render.differences(files)
    if args.check:
        if changed:
            print(f"{IMAGES.relative_to(ROOT)}/ is not what the templates and matrix produce; "
                  "run 'python build.py render'. Files that differ:", file=sys.stderr)
            for path in changed:
                print(f"  images/{path}", file=sys.stderr)
            return 1
        print(f"images/ is up to date ({len(files)} files)")
        return 0
    render.write_tree(files)
    print(f"rendered {len(files)} files into images/ ({len(changed)} changed)")
    return 0


def cmd_lock(args: argparse.Namespace) -> int:
    """Lock pip environments per cell and apt pins per OS."""
    matrix = _matrix(args)
    cells = matrix.select(args.cells)
    uv = str(Path(sys.executable).with_name("uv"))
    mirrors = debian.host_mirrors(args.mirror, args.security_mirror)
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
    from .lint import lint

    return 0 if lint(_matrix(args)) else 1


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

    from . import commands  # the engine-backed commands

    commands.add_commands(sub, _mirror_options, VARIANTS)
    return parser


def _mirror_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mirror", help="Debian archive URL (default: the host's apt sources)")
    p.add_argument("--security-mirror", help="Debian security archive URL")


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
