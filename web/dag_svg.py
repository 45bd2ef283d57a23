"""A workflow's DAG drawn as SVG on the server: layered, labelled, edges clear of boxes.

Steps sit in layers by topological generation, top to bottom. An edge that spans
more than one layer passes through invisible waypoints, one per layer it crosses,
which take a slot in that layer like a thin node; so every piece of every edge runs
either through the gap between two adjacent layers or through its own slot, and no
edge can cross a box. Order within layers comes from barycenter sweeps; x positions
from an isotonic fit (each node as close to its neighbours' mean as the order allows).

The geometry depends only on the graph, so it is computed once per definition
version; a run page only changes the colours. Past `COMPACT_OVER` steps the drawing
becomes compact: small unlabelled squares, one `<path>` per state and one for all
edges, so a 5,000-step graph stays a few elements.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from markupsafe import Markup, escape

if TYPE_CHECKING:
    from runner.dsl.dag import Dag

COMPACT_OVER = 150
STATES = ("pending", "running", "waiting", "succeeded", "failed", "skipped", "upstream_failed", "cancelled")
_CHAR_W = 7.3  # 12px monospace
_MAX_LABEL = 26


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Layout:
    width: float
    height: float
    compact: bool
    boxes: dict[str, Box]  # real steps only
    edges: list[tuple[str, str, tuple[tuple[float, float], ...]]]  # (from, to, points)


_CACHE: OrderedDict[tuple, Layout] = OrderedDict()
_CACHE_SIZE = 64


def layout_for(key: str, dag: Dag) -> Layout:
    """The layout of `dag`, cached under `key` (a definition version)."""
    cache_key = (key, len(dag.order))
    found = _CACHE.get(cache_key)
    if found is None:
        found = layout(layers_of(dag), dag.deps)
        _CACHE[cache_key] = found
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(cache_key)
    return found


def layers_of(dag: Dag) -> list[list[str]]:
    """Topological generations in file order, in linear time (`dag.order` is topological)."""
    level: dict[str, int] = {}
    layers: list[list[str]] = []
    for sid in dag.order:
        level[sid] = 1 + max((level[d] for d in dag.deps[sid]), default=-1)
        if level[sid] == len(layers):
            layers.append([])
        layers[level[sid]].append(sid)
    return layers


def label_of(step_id: str) -> str:
    return step_id if len(step_id) <= _MAX_LABEL else step_id[: _MAX_LABEL - 1] + "…"


def layout(generations: list[list[str]], deps: Mapping[str, tuple[str, ...]]) -> Layout:
    """Place `generations` (layers of step ids) with edges dep -> step from `deps`."""
    n_real = sum(len(g) for g in generations)
    compact = n_real > COMPACT_OVER
    node_h, rank_gap, node_gap, margin = (10, 22, 6, 8) if compact else (30, 46, 22, 12)
    virtual_w = 2 if compact else 8

    layer_of = {s: i for i, g in enumerate(generations) for s in g}
    layers: list[list] = [list(g) for g in generations]
    width: dict = {}
    for g in generations:
        for s in g:
            width[s] = 10 if compact else max(56.0, len(label_of(s)) * _CHAR_W + 22)
    ups: dict = {s: [] for s in layer_of}
    downs: dict = {s: [] for s in layer_of}
    chains: list[tuple[str, str, list]] = []  # each edge as its node path, waypoints included
    for step, ds in deps.items():
        if step not in layer_of:
            continue
        for dep in ds:
            if dep not in layer_of:
                continue
            path: list = [dep]
            for k in range(layer_of[dep] + 1, layer_of[step]):
                waypoint = ("~", dep, step, k)
                layers[k].append(waypoint)
                width[waypoint] = virtual_w
                ups[waypoint], downs[waypoint] = [], []
                path.append(waypoint)
            path.append(step)
            for a, b in zip(path, path[1:], strict=False):
                downs[a].append(b)
                ups[b].append(a)
            chains.append((dep, step, path))

    _order(layers, ups, downs)
    xs = _place(layers, ups, downs, width, node_gap)
    left = min((xs[n] - width[n] / 2 for layer in layers for n in layer), default=0.0)
    right = max((xs[n] + width[n] / 2 for layer in layers for n in layer), default=0.0)
    shift = margin - left
    top = {i: margin + i * (node_h + rank_gap) for i in range(len(layers))}
    boxes = {
        s: Box(round(xs[s] + shift - width[s] / 2, 1), top[layer_of[s]], round(width[s], 1), node_h)
        for s in layer_of
    }
    edges = []
    for dep, step, path in chains:
        a, b = boxes[dep], boxes[step]
        points = [(a.x + a.w / 2, a.y + a.h)]
        for waypoint in path[1:-1]:
            x = round(xs[waypoint] + shift, 1)
            y = top[waypoint[3]]
            points += [(x, y), (x, y + node_h)]
        points.append((b.x + b.w / 2, b.y))
        edges.append((dep, step, tuple(points)))
    height = margin * 2 + len(layers) * node_h + max(0, len(layers) - 1) * rank_gap
    return Layout(round(right - left + 2 * margin, 1), height, compact, boxes, edges)


def _order(layers: list[list], ups: dict, downs: dict, sweeps: int = 4) -> None:
    """Reorder each layer by the mean position of its neighbours (barycenter heuristic)."""
    pos = {n: i for layer in layers for i, n in enumerate(layer)}
    for sweep in range(sweeps):
        down = sweep % 2 == 0
        rng = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for i in rng:
            layer = layers[i]
            nbrs = ups if down else downs

            def bary(n, nbrs=nbrs):
                ns = nbrs[n]
                return sum(pos[m] for m in ns) / len(ns) if ns else pos[n]

            layer.sort(key=bary)
            for j, n in enumerate(layer):
                pos[n] = j


def _place(layers: list[list], ups: dict, downs: dict, width: dict, gap: float) -> dict:
    """x centres: start packed, then pull each layer toward its neighbours, order kept."""
    xs: dict = {}
    widest = max((sum(width[n] + gap for n in layer) for layer in layers), default=0.0)
    for layer in layers:
        total = sum(width[n] + gap for n in layer)
        x = (widest - total) / 2
        for n in layer:
            xs[n] = x + width[n] / 2
            x += width[n] + gap
    for rounds in range(4):
        down = rounds % 2 == 0
        rng = range(1, len(layers)) if down else range(len(layers) - 2, -1, -1)
        for i in rng:
            layer = layers[i]
            nbrs = ups if down else downs
            want = [sum(xs[m] for m in nbrs[n]) / len(nbrs[n]) if nbrs[n] else xs[n] for n in layer]
            for n, x in zip(layer, _fit_in_order(want, [width[n] for n in layer], gap), strict=True):
                xs[n] = x
    return xs


def _fit_in_order(want: list[float], widths: list[float], gap: float) -> list[float]:
    """Positions closest (least squares) to `want` keeping order and spacing (pool adjacent violators)."""
    offsets = [0.0]
    for a, b in zip(widths, widths[1:], strict=False):
        offsets.append(offsets[-1] + a / 2 + gap + b / 2)
    target = [w - o for w, o in zip(want, offsets, strict=True)]
    blocks: list[list[float]] = []  # [mean, count]
    for t in target:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, c2 = blocks.pop()
            m1, c1 = blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    out: list[float] = []
    for mean, count in blocks:
        out += [mean] * int(count)
    return [v + o for v, o in zip(out, offsets, strict=True)]


# -- drawing -----------------------------------------------------------------------


def state_class(status: str | None) -> str:
    return status if status in STATES else "none"


def render_svg(lay: Layout, states: Mapping[str, str] | None = None, *,
               href: Callable[[str], str] | None = None, titles: Mapping[str, str] | None = None) -> Markup:
    """The drawing as an `<svg>` element. Labels and titles are escaped here.

    Args:
        states: step id -> state, for colours (none: the plain definition).
        href: step id -> the URL its box links to (full drawing only).
        titles: step id -> extra tooltip text (full drawing only).
    """
    states = states or {}
    w, h = int(lay.width + 0.5), int(lay.height + 0.5)
    out = [f'<svg class="dag{" compact" if lay.compact else ""}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="workflow graph, '
           f'{len(lay.boxes)} steps">']
    if lay.compact:
        out.append(_compact(lay, states))
    else:
        out.append('<defs><marker id="dag-arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" '
                   'markerHeight="7" orient="auto"><path d="M0 0L8 4L0 8z" class="arrowhead"/></marker></defs>')
        out.append('<g class="edges">')
        for dep, step, points in lay.edges:
            d = "M" + "L".join(f"{x:g} {y:g}" for x, y in points)
            out.append(f'<path class="edge" data-from="{escape(dep)}" data-to="{escape(step)}" d="{d}" '
                       f'marker-end="url(#dag-arrow)"/>')
        out.append("</g><g class=\"nodes\">")
        for sid, box in lay.boxes.items():
            out.append(_node(sid, box, states.get(sid) if states else None, href, (titles or {}).get(sid)))
        out.append("</g>")
    out.append("</svg>")
    return Markup("".join(out))


def _node(sid: str, box: Box, status: str | None, href: Callable[[str], str] | None,
          title: str | None) -> str:
    cls = f"node s-{state_class(status)}" if status is not None else "node"
    tip = sid + (f" — {status}" if status else "") + (f" — {title}" if title else "")
    text_x, text_y = box.x + box.w / 2, box.y + box.h / 2 + 4
    inner = (f'<title>{escape(tip)}</title><rect x="{box.x:g}" y="{box.y:g}" width="{box.w:g}" '
             f'height="{box.h:g}" rx="6"/><text x="{text_x:g}" y="{text_y:g}">{escape(label_of(sid))}</text>')
    if href is not None:
        inner = f'<a href="{escape(href(sid))}">{inner}</a>'
    return f'<g class="{cls}" data-step="{escape(sid)}">{inner}</g>'


def _compact(lay: Layout, states: Mapping[str, str]) -> str:
    by_state: dict[str, list[str]] = {}
    for sid, box in lay.boxes.items():
        cls = state_class(states.get(sid)) if states else "none"
        by_state.setdefault(cls, []).append(f"M{box.x:g} {box.y:g}h{box.w:g}v{box.h:g}h-{box.w:g}z")
    edges = "".join("M" + "L".join(f"{x:g} {y:g}" for x, y in pts) for _, _, pts in lay.edges)
    parts = [f'<path class="edges" d="{edges}"/>'] if edges else []
    for cls, rects in by_state.items():
        parts.append(f'<path class="nodes s-{cls}" d="{"".join(rects)}"/>')
    return "".join(parts)
