"""``stats``: tiles, buckets populated and full, yield per region: real tiles first, then what
synthetic ones add."""

from __future__ import annotations

from typing import NamedTuple

from ..core.summary import plural
from .options import add_library_option
from .result import CommandResult


class StatsReport(NamedTuple):
    """``Library.stats()`` with its one-line summary and per-region lines."""

    stats: dict

    def summary(self) -> str:
        """Real coverage first, then what synthetic tiles add (when there are any)."""
        s = self.stats
        if not s["tiles_synthetic"]:
            line = (f"{plural(s['tiles'], 'tile')} in {s['buckets_populated']}/{s['buckets_total']} buckets "
                    f"({s['coverage']:.1%}), {s['buckets_full']} full at cap {s['cap']}")
        else:
            line = (f"{plural(s['tiles_real'], 'real tile')} in {s['buckets_real']}/{s['buckets_total']} buckets "
                    f"({s['coverage_real']:.1%}), {s['buckets_full_real']} full at cap {s['cap']}; synthetic tiles "
                    f"add {s['tiles_synthetic']} tiles and {plural(s['buckets_synthetic_only'], 'bucket')} "
                    f"({s['buckets_populated']}/{s['buckets_total']}, {s['coverage']:.1%}, with them)")
        if "reachability" in s:
            r = s["reachability"]
            line += (f"; buckets: {r['populated']} populated, {r['reachable_empty']} reachable but empty (the atlas "
                     f"saw the colour), {r['not_seen']} not seen on the source")
        if "aimed" in s:
            a = s["aimed"]
            line += (f"; aimed harvest: hit rate {a['hit_rate']:.1%} ({a['hits']}/{a['decoded']}), "
                     f"{a['new_buckets']} new buckets, {a['new_buckets_per_1000']:g} per 1,000 fetches")
        return line

    def region_lines(self) -> list[str]:
        lines = []
        for region, n in self.stats["by_region"].items():
            tried = sum(self.stats["fetched_by_region"].get(region, {}).values())
            yield_text = f", {n / tried:.1%} of {tried} fetched" if tried else ""
            name = "(no region: ingested)" if region == "(none)" else region
            lines.append(f"  {name}: {plural(n, 'real tile')}{yield_text}")
        synthetic = self.stats.get("synthetic") or {}
        if synthetic.get("tiles"):
            lines.append(f"  {synthetic['tiles']} synthetic tiles ({synthetic['flat']} flat, from {synthetic['sources']} "
                         f"real tiles) fill {synthetic['buckets_only_synthetic']} buckets; real tiles alone "
                         f"{synthetic['buckets_populated_real']}")
        return lines

    def as_dict(self) -> dict:
        return self.stats


def register(sub):
    p = sub.add_parser("stats", help="tiles, buckets populated/full, per-region yield")
    add_library_option(p)
    return p


def run(args) -> CommandResult:
    from ..core.library import Library

    with Library.open(args.library, readonly=True) as lib:
        report = StatsReport(lib.stats())
    return CommandResult(report, after=report.region_lines())
