"""``query --lab L A B | --rgb R G B | --hex RRGGBB [--hub USER/NAME]``: nearest buckets and their tiles."""

from __future__ import annotations

from typing import NamedTuple

from ..core.defaults import DEFAULT_QUERY_PATHS
from ..core.summary import plural
from .options import add_library_option, integer
from .result import CommandResult


class QueryReport(NamedTuple):
    """The queried colour (as the user wrote it, and in LAB) and its nearest buckets."""

    label: str
    lab: tuple[float, float, float]
    matches: list  # builder.core.query.BucketMatch, nearest first
    real_only: bool = False

    def summary(self) -> str:
        lab = self.lab
        real = sum(m.real for m in self.matches)
        synthetic = sum(m.synthetic for m in self.matches)
        populated = sum(1 for m in self.matches if m.count)
        tiles = f"{plural(real, 'real tile')}" + ("" if self.real_only else f", {synthetic} synthetic")
        only = " (--real-only)" if self.real_only else ""
        return (f"{self.label} = LAB ({lab[0]:.2f}, {lab[1]:.2f}, {lab[2]:.2f}): "
                f"{plural(len(self.matches), 'nearest bucket')}{only}, {populated} populated, {tiles}")

    def bucket_lines(self) -> list[str]:
        from ..core.query import REAL

        lines = []
        for m in self.matches:
            split = f" ({m.real} real, {m.synthetic} synthetic)" if m.synthetic and not self.real_only else ""
            lines.append(f"  bucket_{m.bucket_id:04d}  dist {m.distance:7.3f}  {m.centroid_hex}  "
                         f"{plural(m.count, 'tile'):>9}{split}")
            lines.extend(f"    {path}" + ("" if kind == REAL else f"  [{kind}]") for path, kind in zip(m.tiles, m.kinds))
            if m.count > len(m.tiles):
                lines.append(f"    ... and {m.count - len(m.tiles)} more (--paths N lists more)")
        return lines

    def as_dict(self) -> dict:
        return {"query": {"input": self.label, "lab": [round(v, 4) for v in self.lab], "real_only": self.real_only},
                "buckets": [m.as_dict() for m in self.matches]}


def register(sub):
    p = sub.add_parser("query", help="nearest colour buckets of a colour, with their tiles")
    add_library_option(p)
    colour = p.add_mutually_exclusive_group(required=True)
    colour.add_argument("--lab", nargs=3, metavar=("L", "A", "B"), help="CIE LAB colour (L 0..100, a/b -128..128)")
    colour.add_argument("--rgb", nargs=3, metavar=("R", "G", "B"), help="sRGB colour, integers 0..255")
    colour.add_argument("--hex", metavar="RRGGBB", help="sRGB colour as hex, with or without #")
    p.add_argument("-k", type=integer(1), default=5, metavar="N", help="how many buckets (default 5)")
    p.add_argument("--populated", action="store_true", help="only buckets that hold tiles")
    p.add_argument("--real-only", action="store_true",
                   help="count and list real tiles only: a bucket holding only synthetic tiles is empty")
    p.add_argument("--paths", type=integer(0), default=DEFAULT_QUERY_PATHS, metavar="N",
                   help=f"tile paths listed per bucket (default {DEFAULT_QUERY_PATHS}; the counts are always whole)")
    p.add_argument("--hub", metavar="USER/NAME", default=None,
                   help="ask a Hub release instead of a library: populated buckets, from its metadata (no image fetched)")
    p.add_argument("--revision", metavar="REV", default=None, help="with --hub: branch, tag or commit (default main)")
    return p


def query_lab(args) -> tuple[tuple[float, float, float], str]:
    """The queried colour in LAB and how the user wrote it."""
    from ..core.color import rgb_to_lab
    from ..core.query import parse_hex, parse_lab, parse_rgb, rgb_to_hex

    if args.lab is not None:
        return parse_lab(args.lab), "lab " + " ".join(args.lab)
    rgb = parse_rgb(args.rgb) if args.rgb is not None else parse_hex(args.hex)
    lab = rgb_to_lab(rgb)
    return (float(lab[0]), float(lab[1]), float(lab[2])), f"rgb {rgb_to_hex(rgb)}"


def run(args) -> CommandResult:
    from ..core.library import Library
    from ..core.query import describe

    lab, label = query_lab(args)
    if args.hub is not None:
        from ..publish.remote import query_hub

        # a release answers with its populated buckets (it knows no empty bucket's tiles); ids, not paths
        found = query_hub(args.hub, lab, k=args.k, revision=args.revision, real_only=args.real_only,
                          max_paths=args.paths)
        report = QueryReport(label, lab, found, args.real_only)
        return CommandResult(report, after=report.bucket_lines())
    if args.revision:
        from ..core.errors import UsageError

        raise UsageError("--revision is for --hub")
    with Library.open(args.library, readonly=True) as lib:
        report = QueryReport(label, lab, describe(lib, lab, k=args.k, populated=args.populated,
                                                  real_only=args.real_only, max_paths=args.paths), args.real_only)
    return CommandResult(report, after=report.bucket_lines())
