"""``zigscan scans ...``: list, show, plot and compare scan paths and schedules.

zigscan scans list [PATTERN]
zigscan scans show NAME --grid 8x8 [--out path.png]
zigscan scans gallery --grid 16x16 --out DIR [PATTERN]
zigscan scans stats [--grid 32x32] [PATTERN]
zigscan scans schedules [PATTERN] [--depth 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .registries import UnknownNameError
from .registry import SCANPATHS, get_scanpath, list_scanpaths
from .schedules import SCHEDULES

__all__ = ["add_parser", "parse_grid"]

ASCII_MAX_CELLS = 1024
ASCII_MAX_WIDTH = 32


def parse_grid(text: str) -> tuple[int, ...]:
    """``"HxW"`` or ``"TxHxW"`` -> tuple of positive ints (argparse type; errors say what to write)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) not in (2, 3) or any(s <= 0 for s in shape):
        raise argparse.ArgumentTypeError(
            f"invalid grid {text!r}: expected HxW for images (e.g. 16x16) or TxHxW for video (e.g. 4x8x8), "
            "with positive integer sides"
        )
    return shape


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _grid_str(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


# ---------------------------------------------------------------------------------------------------
# Handlers (each returns an exit code)
# ---------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    names = list_scanpaths(args.pattern)
    if not names:
        return _err(f"no scan path matches {args.pattern!r}; run `zigscan scans list` to see all")
    rows = [("name", "dims", "continuous", "source", "description")]
    for n in names:
        p = get_scanpath(n)
        rows.append((n, f"{p.ndim}D", "yes" if p.continuous else "no", SCANPATHS.source(n), p.description))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def _ascii(path, shape: tuple[int, ...]) -> str:
    inv = path.inverse(shape).numpy()
    width = len(str(inv.size - 1))
    frames = [inv.reshape(shape)] if len(shape) == 2 else list(inv.reshape(shape))
    out = []
    for t, frame in enumerate(frames):
        if len(shape) == 3:
            out.append(f"t={t}:")
        out.extend(" ".join(str(int(v)).rjust(width) for v in row) for row in frame)
    return "\n".join(out)


def cmd_show(args: argparse.Namespace) -> int:
    try:
        path = get_scanpath(args.name)
        shape = args.grid
        if args.out:
            from .plot import plot_path

            plot_path(path, shape, args.out)
            print(f"wrote {args.out}")
            return 0
        path.order(shape)  # validates the grid's dimension with a clear message
    except (UnknownNameError, ValueError) as exc:
        return _err(str(exc))
    if path.numel(shape) > ASCII_MAX_CELLS or shape[-1] > ASCII_MAX_WIDTH:
        return _err(
            f"grid {_grid_str(shape)} is too large to print (at most {ASCII_MAX_CELLS} cells and "
            f"{ASCII_MAX_WIDTH} columns); write a picture with --out FILE.png"
        )
    print(
        f"{path.name} on {_grid_str(shape)}: step at which each cell is visited "
        f"(segments: {path.segments(shape)})"
    )
    print(_ascii(path, shape))
    return 0


def _matching(pattern: str, ndim: int) -> list[str]:
    return [n for n in list_scanpaths(pattern) if get_scanpath(n).ndim == ndim]


def cmd_gallery(args: argparse.Namespace) -> int:
    from .plot import plot_gallery, plot_path

    shape = args.grid
    names = _matching(args.pattern, len(shape))
    if not names:
        return _err(f"no {len(shape)}D scan path matches {args.pattern!r} (grid {_grid_str(shape)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        plot_path(n, shape, out / f"{n}.png")
    sheet = out / f"gallery-{_grid_str(shape)}.png"
    plot_gallery(names, shape, sheet)
    print(f"wrote {len(names)} paths and the overview {sheet}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .locality import format_locality_table, locality_table

    shape = args.grid
    names = _matching(args.pattern, len(shape))
    if not names:
        return _err(
            f"no {len(shape)}D scan path matches {args.pattern!r}; use --grid HxW for images, "
            "TxHxW for video paths"
        )
    print(format_locality_table(locality_table(names, shape)))
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    names = SCHEDULES.names(args.pattern)
    if not names:
        return _err(f"no schedule matches {args.pattern!r}; run `zigscan scans schedules` to see all")
    try:
        rows = [(n, SCHEDULES.get(n).names(args.depth), SCHEDULES.source(n)) for n in names]
    except (UnknownNameError, ValueError) as exc:
        return _err(str(exc))
    width = max(len(n) for n in names)
    print(f"path of each layer, depth {args.depth}:")
    for n, paths, src in rows:
        extra = f"  [{src}]" if src != "zigscan" else ""
        print(f"{n.ljust(width)}  {', '.join(paths)}{extra}")
    return 0


# ---------------------------------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------------------------------


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``scans`` command group to a ``subparsers`` object of the main CLI."""
    p = subparsers.add_parser(
        "scans",
        help="list, show, plot and compare scan paths and schedules",
        description="Scan paths (token orders) and schedules (one path per layer).",
    )
    sub = p.add_subparsers(dest="scans_command", metavar="COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    q = sub.add_parser("list", help="list scan paths", description="List scan paths matching a wildcard.")
    q.add_argument(
        "pattern", nargs="?", default="*", help="shell-style wildcard, e.g. 'zigzag-*' (default: all)"
    )
    q.set_defaults(func=cmd_list)

    q = sub.add_parser(
        "show",
        help="print or plot one scan path",
        description="Print the step of each cell (small grids) or draw the path to a PNG with --out.",
    )
    q.add_argument("name", help="scan path name, e.g. zigzag-s3 (see `zigscan scans list`)")
    q.add_argument(
        "--grid", type=parse_grid, default=(8, 8), help="HxW, or TxHxW for video paths (default 8x8)"
    )
    q.add_argument("--out", help="write a PNG here instead of printing")
    q.set_defaults(func=cmd_show)

    q = sub.add_parser(
        "gallery",
        help="plot every (matching) path to a folder",
        description="One PNG per path plus an overview sheet; a TxHxW grid draws the video paths.",
    )
    q.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: all)")
    q.add_argument("--grid", type=parse_grid, default=(8, 8), help="HxW or TxHxW (default 8x8)")
    q.add_argument("--out", required=True, help="output folder (created if missing)")
    q.set_defaults(func=cmd_gallery)

    q = sub.add_parser(
        "stats",
        help="locality table of the (matching) paths",
        description="Mean/max scan distance between grid neighbours and the fraction of neighbour steps.",
    )
    q.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: all)")
    q.add_argument("--grid", type=parse_grid, default=(32, 32), help="HxW or TxHxW (default 32x32)")
    q.set_defaults(func=cmd_stats)

    q = sub.add_parser(
        "schedules",
        help="list schedules and the path of each layer",
        description="Schedules and the scan path of each layer (Omega_i = S_(i mod K)).",
    )
    q.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard (default: all)")
    q.add_argument("--depth", type=int, default=8, help="number of layers to show (default 8)")
    q.set_defaults(func=cmd_schedules)
    return p
