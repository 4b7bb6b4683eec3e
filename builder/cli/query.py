"""``query --lab L A B | --rgb R G B | --hex RRGGBB``: nearest buckets and their tiles."""

from __future__ import annotations

import json

from ..color import rgb_to_lab
from ..library import Library
from ..query import describe, parse_hex, parse_lab, parse_rgb, rgb_to_hex
from . import add_library_option, positive_int


def register(sub) -> None:
    p = sub.add_parser("query", help="nearest colour buckets of a colour, with their tiles")
    add_library_option(p)
    colour = p.add_mutually_exclusive_group(required=True)
    colour.add_argument("--lab", nargs=3, metavar=("L", "A", "B"), help="CIE LAB colour (L 0..100, a/b -128..128)")
    colour.add_argument("--rgb", nargs=3, metavar=("R", "G", "B"), help="sRGB colour, integers 0..255")
    colour.add_argument("--hex", metavar="RRGGBB", help="sRGB colour as hex, with or without #")
    p.add_argument("-k", type=positive_int, default=5, metavar="N", help="how many buckets (default 5)")
    p.add_argument("--populated", action="store_true", help="only buckets that hold tiles")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def query_lab(args) -> tuple[tuple[float, float, float], str]:
    """The queried colour in LAB and how the user wrote it."""
    if args.lab is not None:
        return parse_lab(args.lab), "lab " + " ".join(args.lab)
    rgb = parse_rgb(args.rgb) if args.rgb is not None else parse_hex(args.hex)
    lab = rgb_to_lab(rgb)
    return (float(lab[0]), float(lab[1]), float(lab[2])), f"rgb {rgb_to_hex(rgb)}"


def run(args) -> int:
    lab, label = query_lab(args)
    with Library.open(args.library, readonly=True) as lib:
        matches = describe(lib, lab, k=args.k, populated=args.populated)
    if args.json:
        print(json.dumps({"query": {"input": label, "lab": [round(v, 4) for v in lab]},
                          "buckets": [m.as_dict() for m in matches]}, indent=2))
        return 0
    tiles = sum(m.count for m in matches)
    populated = sum(1 for m in matches if m.count)
    print(f"{label} = LAB ({lab[0]:.2f}, {lab[1]:.2f}, {lab[2]:.2f}): {len(matches)} nearest buckets, "
          f"{populated} populated, {tiles} tiles")
    for m in matches:
        print(f"  bucket_{m.bucket_id:04d}  dist {m.distance:7.3f}  {m.centroid_hex}  {m.count:3d} tiles")
        for path in m.tiles:
            print(f"    {path}")
    return 0
