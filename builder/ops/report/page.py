"""The gallery page (``index.html``): the headline figures, the four figures and a card per bucket
linking its contact sheet; opens from disk, relative links only, no network."""

from __future__ import annotations

import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ...core.layout import bucket_name
from ...core.library import Library
from ...core.summary import plural
from .figures import NEUTRAL_CHROMA, chroma, hue_angle


@dataclass
class BucketEntry:
    bucket_id: int
    count: int
    lab: tuple[float, float, float]
    hex: str
    sheet: str  # relative path inside the report
    synthetic: int = 0  # of ``count``, synthetic tiles (badged on the sheet)



def gallery_order(centroids: np.ndarray, bucket_ids: np.ndarray, real: np.ndarray) -> np.ndarray:
    """The gallery's default order: buckets holding real tiles first, then those holding only
    synthetic ones, each group by colour (:func:`colour_order`); ``real``: real tiles per bucket id."""
    with_real = np.array([b for b in bucket_ids if real[b] > 0], dtype=np.int64)
    synthetic = np.array([b for b in bucket_ids if real[b] == 0], dtype=np.int64)
    return np.concatenate([colour_order(centroids, with_real), colour_order(centroids, synthetic)])


def colour_order(centroids: np.ndarray, bucket_ids: np.ndarray) -> np.ndarray:
    """Buckets sorted by colour: chromatic ones by hue then L, greys after them by L."""
    c = centroids[bucket_ids]
    grey = chroma(c) < NEUTRAL_CHROMA
    hue = np.round(hue_angle(c) / 10.0)  # 10-degree hue families, L inside each
    return bucket_ids[np.lexsort((c[:, 0], hue, grey))]


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#fafaf8;color:#1e1e1e}
header{padding:18px 28px;background:#1f2d3d;color:#f4f4f4}
header h1{margin:0 0 6px;font-size:24px}
header p{margin:2px 0;font-size:15px;opacity:.92}
header .real{font-size:17px;font-weight:600;opacity:1}
main{padding:12px 28px 40px}
h2{font-size:19px;margin:22px 0 10px}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px;align-items:start}
.figures figure{margin:0;background:#fff;border:1px solid #ddd;padding:8px}
.figures img{width:100%;max-width:640px;height:auto;display:block;margin:0 auto}
.figures figcaption{font-size:14px;color:#444;padding-top:6px}
.controls{margin:6px 0 12px;font-size:14px;display:flex;flex-wrap:wrap;gap:6px 18px;align-items:center}
.controls button{font:inherit;margin-right:6px;padding:3px 10px;border:1px solid #999;background:#fff;border-radius:4px;cursor:pointer}
.controls button.on{background:#1f2d3d;color:#fff;border-color:#1f2d3d}
#buckets{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:12px}
.bucket{background:#fff;border:1px solid #ddd;border-radius:6px;overflow:hidden}
.bucket.synthetic-only{border:2px dashed #ff00c8}
.bucket[hidden]{display:none}
.bucket .head{display:flex;align-items:center;gap:8px;padding:6px 8px;font-size:13px}
.swatch{width:34px;height:34px;border-radius:4px;border:1px solid rgba(0,0,0,.35);flex:none}
.bucket .name{font-weight:600}
.bucket .lab{color:#666;font-size:11px}
.bucket .tag{color:#b0008c;font-weight:600}
.bucket img{display:block;width:100%;aspect-ratio:1/1;object-fit:contain;background:#181818}
"""

# Sorting (hue, lightness, tiles; real buckets first unless "all by hue") and filtering (all,
# with real tiles, synthetic only; also from the address: index.html#real, #synthetic, #all).
_JS = """
(function(){
  var grid=document.getElementById('buckets');
  var keys={real:function(e){return +e.dataset.order},hue:function(e){return +e.dataset.hue},
            l:function(e){return -e.dataset.l},count:function(e){return -e.dataset.count}};
  function sort(b){
    var k=keys[b.dataset.sort];
    var items=Array.prototype.slice.call(grid.children);
    items.sort(function(x,y){return k(x)-k(y)||(+x.dataset.order)-(+y.dataset.order)});
    items.forEach(function(e){grid.appendChild(e)});
    document.querySelectorAll('button[data-sort]').forEach(function(o){o.classList.toggle('on',o===b)});
  }
  function show(kind){
    var shown=0;
    Array.prototype.forEach.call(grid.children,function(e){
      var real=+e.dataset.real>0;
      e.hidden=kind==='real'?!real:kind==='synthetic'?real:false;
      if(!e.hidden)shown++;
    });
    document.querySelectorAll('button[data-show]').forEach(function(o){o.classList.toggle('on',o.dataset.show===kind)});
    document.getElementById('shown').textContent=shown;
  }
  document.querySelectorAll('button[data-sort]').forEach(function(b){b.addEventListener('click',function(){sort(b)})});
  document.querySelectorAll('button[data-show]').forEach(function(b){
    b.addEventListener('click',function(){show(b.dataset.show);history.replaceState(null,'','#'+b.dataset.show)});
  });
  var wanted=location.hash.slice(1);
  show(wanted==='real'||wanted==='synthetic'?wanted:'all');
})();
"""

_CAPTIONS = {
    "centroids_ab": "Every centroid on the a*/b* plane in its own colour: discs are buckets holding real tiles "
                    "(area grows with them), magenta-outlined squares buckets holding only synthetic tiles, "
                    "hollow rings empty buckets.",
    "centroids_l": "The same buckets by hue angle and lightness L*.",
    "region_yield": "Real tiles kept and tiles fetched per sampling region; synthetic tiles, made here from real "
                    "ones, on a magenta row of their own.",
    "bucket_fill": "How many tiles the buckets hold, on a log scale: buckets with real tiles by their real tiles, "
                   "beside them (magenta) the buckets holding only synthetic tiles.",
}


def header_html(stats: dict) -> str:
    """The page's headline: real coverage first, then what synthetic tiles add (when any)."""
    real = (f"{stats['tiles_real']:,} real tiles in {stats['buckets_real']:,} of {stats['buckets_total']:,} colour "
            f"buckets ({stats['coverage_real']:.1%}), {stats['buckets_full_real']} full at cap {stats['cap']}.")
    if not stats["tiles_synthetic"]:
        return f'<p class="real">{real}</p>\n'
    return (f'<p class="real">{real}</p>\n<p>Synthetic tiles (colour transfer from real ones, badged <b>S</b> on the '
            f"contact sheets) add {stats['tiles_synthetic']:,} tiles and {stats['buckets_synthetic_only']:,} buckets "
            f"that hold nothing else: {stats['buckets_populated']:,} buckets ({stats['coverage']:.1%}) with them.</p>\n")


def _reach_html(stats: dict) -> str:
    """The three-way split of the buckets when the library has a colour atlas (else nothing)."""
    r = stats.get("reachability")
    if r is None:
        return ""
    return (f"<p>Colour atlas: {r['populated']} buckets populated, {r['reachable_empty']} reachable but empty "
            f"(the atlas saw the colour: <code>harvest --target empty</code> can fill them), {r['not_seen']} not "
            "seen on the source.</p>\n")


def render_html(lib: Library, entries: list[BucketEntry], figures: dict[str, Path], out: Path) -> str:
    """The gallery page; every link is relative to ``out`` and points at a file written here."""
    esc = html.escape
    stats = lib.stats()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    figs = []
    for name, path in figures.items():
        rel = path.relative_to(out).as_posix()
        figs.append(f'<figure><a href="{esc(rel)}"><img src="{esc(rel)}" alt="{esc(name)}"></a>'
                    f"<figcaption>{esc(_CAPTIONS.get(name, name))}</figcaption></figure>")
    cards = []
    hue_rank = {int(b): i for i, b in enumerate(colour_order(lib.centroids, np.array([e.bucket_id for e in entries],
                                                                                     dtype=np.int64)))}
    for order, e in enumerate(entries):
        name = bucket_name(e.bucket_id)
        lab = " ".join(f"{v:.1f}" for v in e.lab)
        real = e.count - e.synthetic
        kind = "" if real else " synthetic-only"
        tiles = (f"{plural(real, 'real tile')}" + (f" + {e.synthetic} synthetic" if e.synthetic else "") if real
                 else f'<span class="tag">{plural(e.synthetic, "synthetic tile")} only</span>')
        cards.append(
            f'<article class="bucket{kind}" id="{name}" data-order="{order}" data-hue="{hue_rank[e.bucket_id]}" '
            f'data-l="{e.lab[0]:.3f}" data-count="{e.count}" data-real="{real}">'
            f'<div class="head"><span class="swatch" style="background:{e.hex}" title="{e.hex}"></span>'
            f'<div><div class="name">{name}</div><div>{tiles}</div>'
            f'<div class="lab">LAB {lab}</div></div></div>'
            f'<a href="{esc(e.sheet)}"><img loading="lazy" src="{esc(e.sheet)}" alt="{name} contact sheet"></a></article>'
        )
    with_real = sum(1 for e in entries if e.count > e.synthetic)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Mosaic Library report: {esc(lib.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>Mosaic Library: {esc(lib.name)}</h1>
{header_html(stats)}{_reach_html(stats)}<p>Generated {esc(when)}.</p>
</header>
<main>
<h2>Coverage</h2>
<div class="figures">
{chr(10).join(figs)}
</div>
<h2>Buckets ({len(entries)} populated: {with_real} with real tiles, {len(entries) - with_real} synthetic only)</h2>
<div class="controls"><span>Show: <button data-show="all" class="on">all</button><button data-show="real">with real tiles</button><button data-show="synthetic">synthetic only</button> (<span id="shown">{len(entries)}</span> shown)</span>
<span>Sort by: <button class="on" data-sort="real">real first, by hue</button><button data-sort="hue">hue</button><button data-sort="l">lightness</button><button data-sort="count">tiles</button></span></div>
<div id="buckets">
{chr(10).join(cards)}
</div>
</main>
<script>{_JS}</script>
</body>
</html>
"""
