"""`_REPORT.html`: the run's summary drawn for people. One self-contained page (inline CSS and SVG, no
script, no external URL), viewable offline, made from `_SUMMARY.json` alone (`render_report` is pure).

Every figure on the page carries where it came from: `data-key="<summary key>"` (with the exact value
in `data-value`), `data-stage` / `data-field` in the stage table, `data-stage` / `data-busy-seconds` on
the busy-time bars, `data-t` on the timelines' x ticks, `data-bucket` / `data-count` in the histograms,
`data-label` and `data-reason` in the label and error tables. Strings from the data (labels, error
reasons, paths, model names) are escaped.

A run of a few seconds stays readable: the timelines' time axis runs to the wall time (`wall_seconds`),
each stage's line has its own colour, dash pattern and marker (see `_line_chart`), and the busy seconds
per stage are bars beside the timelines.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import NamedTuple

from pipeline.output import REPORT, OutputDir

STAGE_COLORS = {"read": "#4e79a7", "tokenize": "#f28e2b", "predict": "#e15759", "postprocess": "#76b7b2",
                "write": "#59a14f"}
_EXTRA_COLORS = ("#af7aa1", "#9c755f", "#edc948", "#bab0ac", "#ff9da7")
MAX_LABELS = 40  # the label table shows the most common; the rest are summed in one row


def write_report(output: OutputDir, summary: dict) -> None:
    output.write_bytes(REPORT, render_report(summary).encode())


def esc(value) -> str:
    return escape(str(value), quote=True)


def _num(value, digits: int | None = None) -> str:
    """A number for people: thousands separated; floats to `digits` decimals (default: as needed)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if digits is None:
            digits = 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.01 else 4
        return f"{value:,.{digits}f}"
    return esc(value)


def _fig(key: str, value, shown: str | None = None) -> str:
    """A summary figure, tagged with its key and exact value."""
    return (f'<span data-key="{esc(key)}" data-value="{esc(json.dumps(value))}">'
            f'{shown if shown is not None else _num(value)}</span>')


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    s = int(round(seconds))
    h, m, s = s // 3600, s // 60 % 60, s % 60
    return f"{h} h {m:02d} m {s:02d} s" if h else f"{m} m {s:02d} s" if m else ""


def _color(stage: str, i: int) -> str:
    return STAGE_COLORS.get(stage, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def _nice_max(v: float) -> float:
    """The smallest 1/2/2.5/5 x 10^k not below v (the top of an axis)."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _tick(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


# --- charts -----------------------------------------------------------------------------------------

W, H = 760, 260
MARKS = 12  # markers per timeline line (at most)
PAD_L, PAD_R, PAD_T, PAD_B = 56, 16, 12, 36
HIST_H = 200


# Each stage's line keeps one look in every chart: its colour, a dash pattern and a marker shape (by its
# place in the timeline), so lines that coincide stay told apart. The first is solid and widest, drawn
# first; each later one is thinner, dashed, and drawn over it.
STAGE_DASHES = ("", "10 4", "6 3", "2 3", "9 3 2 3", "4 2 1 2", "12 3 3 3", "1 2")
STAGE_MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "pentagon", "hexagon", "bar")


def _dash(i: int) -> str:
    return STAGE_DASHES[i % len(STAGE_DASHES)]


def _marker(i: int) -> str:
    return STAGE_MARKERS[i % len(STAGE_MARKERS)]


def _width(i: int, n: int) -> float:
    return 1.8 + 0.9 * max(n - 1 - i, 0)


def _marker_path(shape: str, x: float, y: float, r: float = 4.6) -> str:
    """One marker as an SVG path (subpath), centred on x, y."""
    if shape == "circle":
        return f"M{x - r:.1f},{y:.1f}a{r},{r} 0 1,0 {2 * r},0a{r},{r} 0 1,0 {-2 * r},0Z"
    if shape == "square":
        q = r * 0.85
        return f"M{x - q:.1f},{y - q:.1f}h{2 * q:.1f}v{2 * q:.1f}h{-2 * q:.1f}Z"
    if shape == "bar":
        return f"M{x - r * 0.4:.1f},{y - r:.1f}h{r * 0.8:.1f}v{2 * r:.1f}h{-r * 0.8:.1f}Z"
    sides, turn = {"triangle": (3, -90), "diamond": (4, -90), "triangle-down": (3, 90), "pentagon": (5, -90),
                   "hexagon": (6, 0)}.get(shape, (4, -90))
    pts = [(x + r * 1.15 * math.cos(math.radians(turn + 360 * k / sides)),
            y + r * 1.15 * math.sin(math.radians(turn + 360 * k / sides))) for k in range(sides)]
    return "M" + "L".join(f"{px:.1f},{py:.1f}" for px, py in pts) + "Z"


def _legend(stages: list[str], order: list[str]) -> str:
    """Each stage's line as drawn: colour, width, dash and marker."""
    keys = []
    for s in stages:
        i = order.index(s)
        dash = f' stroke-dasharray="{_dash(i)}"' if _dash(i) else ""
        keys.append(f'<span class="key" data-stage="{esc(s)}"><svg class="sample" width="40" height="14" '
                    f'viewBox="0 0 40 14" aria-hidden="true"><line x1="1" x2="39" y1="7" y2="7" '
                    f'stroke="{_color(s, i)}" stroke-width="{_width(i, len(order)):.1f}"{dash}/>'
                    f'<path d="{_marker_path(_marker(i), 20, 7, 4.2)}" fill="{_color(s, i)}" stroke="#fff" '
                    f'stroke-width="1"/></svg>{esc(s)}</span>')
    return f'<div class="legend">{"".join(keys)}</div>'


def _seconds(value) -> float | None:
    """A positive, finite number of seconds, or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _axis(s: dict, series: dict[str, list], bucket_seconds: float) -> _Axis:
    """The time axis runs to the wall time: the buckets count from the run's start, and the last one
    may end after it. A summary without a wall time, or whose buckets outrun it, ends at the last bucket."""
    n = max((len(v) for v in series.values()), default=0)
    wall = _seconds(s.get("wall_seconds"))
    span = wall if wall is not None and wall > (n - 1) * bucket_seconds else max(n, 1) * bucket_seconds
    return _Axis(bucket_seconds, span, s.get("wall_seconds") if span == wall else None, list(series))


class _Axis(NamedTuple):
    """A timeline chart's time axis: its buckets' width, its end (the wall time, `wall`, where the summary
    has it) and the order of the stages, which sets each stage's look."""

    bucket_seconds: float
    span: float
    wall: float | None
    order: list[str]


def _line_chart(name: str, series: dict[str, list], unit: str, axis: _Axis) -> str:
    """Rate per second over time, one step line (`polyline`, `data-stage`) per stage, with its markers
    (`path`, `data-marker`) over the lines. The x axis runs from 0 to `span` (the wall time): its last
    tick says the wall time (`data-key="wall_seconds"`); a bucket that the axis cuts is a rate over the
    part of it that is shown."""
    bucket_seconds, span, wall, order = axis
    rates = {}
    for stage, v in series.items():
        r = []
        for b, x in enumerate(v):
            shown = min(bucket_seconds, span - b * bucket_seconds)
            # the last bucket may end after the run (cut at the wall time): its rows came in the part shown
            r.append((x or 0) / max(shown, bucket_seconds / 4) if shown > 0 else None)
        rates[stage] = r
    top = _nice_max(max((r for v in rates.values() for r in v if r is not None), default=0.0))
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(t: float) -> float:
        return PAD_L + iw * min(t, span) / span

    def py(r: float) -> float:
        return PAD_T + ih * (1 - r / top)

    parts = [f'<svg class="chart" data-chart="{esc(name)}" data-span="{span:g}" viewBox="0 0 {W} {H}" '
             f'role="img" aria-label="{esc(unit)} per stage over time">']
    for k in range(5):  # horizontal grid and y ticks
        v = top * k / 4
        y = py(v)
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(v)}</text>')
    step = _nice_max(span / 6)
    ticks = [k * step for k in range(int(span / step) + 1) if k == 0 or k * step <= span - 0.35 * step]
    for t in ticks:  # x ticks, seconds since the run started; the last one, the end, below
        x = px(t)
        parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{H - PAD_B}" y2="{H - PAD_B + 4}"/>'
                     f'<text class="tick" data-t="{t:g}" x="{x:.1f}" y="{H - PAD_B + 16}" '
                     f'text-anchor="middle">{_tick(t)}</text>')
    x = px(span)
    end = (f'<tspan data-key="wall_seconds" data-value="{esc(json.dumps(wall))}">{_num(float(wall))} s</tspan>'
           if span == wall else _tick(span))  # a tspan: an HTML span would end the SVG
    parts.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{H - PAD_B + 4}"/>'
                 f'<text class="tick end" data-t="{span:g}" x="{x:.1f}" y="{H - PAD_B + 16}" '
                 f'text-anchor="end"><title>the run\'s end (its wall time)</title>{end}</text>')
    parts.append(f'<text class="axis-title" x="{PAD_L + iw / 2}" y="{H - 4}" text-anchor="middle">'
                 f'seconds since the run started</text>'
                 f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{H - PAD_B}" y2="{H - PAD_B}"/>')
    markers = []
    gap = span / MARKS  # a marker every `gap` seconds on each line, each stage's at its own offset
    for stage, v in rates.items():
        i = order.index(stage)
        color, dash = _color(stage, i), _dash(i)
        pts, marks = [], []
        for b, r in enumerate(v):
            if r is None:
                break
            t0, t1 = b * bucket_seconds, min((b + 1) * bucket_seconds, span)
            pts += [f"{px(t0):.1f},{py(r):.1f}", f"{px(t1):.1f},{py(r):.1f}"]
        for k in range(MARKS):  # on the flat of a step, where its rate is above 0: coinciding lines
            t = gap * (k + (i + 1) / (len(order) + 1))  # show each stage's marker in turn
            b = int(t // bucket_seconds)
            if b < len(v) and v[b] and min(t - b * bucket_seconds, (b + 1) * bucket_seconds - t) > 0.04 * gap:
                marks.append(_marker_path(_marker(i), px(t), py(v[b])))
        peak = max((r for r in v if r is not None), default=0.0)
        # The first stage is the widest and solid, under the later ones, which are thinner and dashed.
        parts.append(f'<polyline data-stage="{esc(stage)}" fill="none" stroke="{color}" '
                     f'stroke-width="{_width(i, len(order)):.1f}" stroke-linejoin="round"'
                     + (f' stroke-dasharray="{dash}"' if dash else "") + f' points="{" ".join(pts)}">'
                     f'<title>{esc(stage)}: peak {_num(float(peak))} {esc(unit)}</title></polyline>')
        markers.append(f'<path class="marker" data-stage="{esc(stage)}" data-marker="{_marker(i)}" '
                       f'fill="{color}" stroke="#fff" stroke-width="1" d="{"".join(marks)}"/>')
    parts += markers  # over every line
    parts.append("</svg>")
    return _legend(list(rates), order) + "".join(parts)


BUSY_W, BUSY_ROW, BUSY_L, BUSY_R = 300, 28, 84, 52


def _busy_chart(stages: dict, wall) -> str:
    """Busy seconds per stage (summed over its workers): one bar (`g` with `data-stage`,
    `data-busy-seconds`) per stage, its seconds written at its end, and the wall time as a dashed line."""
    items = [(s, float((st or {}).get("busy_seconds") or 0.0)) for s, st in stages.items()]
    has_wall = _seconds(wall) is not None
    top = _nice_max(max([b for _, b in items] + ([float(wall)] if has_wall else []), default=0.0))
    pad_t, pad_b = 18, 30
    h = pad_t + BUSY_ROW * len(items) + pad_b
    iw = BUSY_W - BUSY_L - BUSY_R

    def px(v: float) -> float:
        return BUSY_L + iw * v / top

    parts = [f'<svg class="chart busy" data-chart="busy" viewBox="0 0 {BUSY_W} {h}" role="img" '
             f'aria-label="busy seconds per stage">']
    for k in range(3):
        v = top * k / 2
        parts.append(f'<line class="grid" x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{pad_t}" y2="{h - pad_b}"/>'
                     f'<text class="tick" x="{px(v):.1f}" y="{h - pad_b + 14}" text-anchor="middle">{_tick(v)}</text>')
    for i, (stage, busy) in enumerate(items):
        y = pad_t + i * BUSY_ROW
        st = stages[stage] or {}
        share = f", {100 * busy / wall:.0f}% of the wall time" if has_wall else ""
        rate = f"; {_num(st['rows_per_second'])} rows per busy second" if st.get("rows_per_second") else ""
        parts.append(
            f'<g data-stage="{esc(stage)}" data-busy-seconds="{esc(json.dumps(st.get("busy_seconds")))}">'
            f'<title>{esc(stage)}: busy {_num(busy)} s, summed over its workers{share}{rate}</title>'
            f'<text class="tick" x="{BUSY_L - 6}" y="{y + BUSY_ROW / 2 + 4:.1f}" text-anchor="end">{esc(stage)}</text>'
            f'<rect class="busybar" x="{BUSY_L}" y="{y + 5}" width="{px(busy) - BUSY_L:.1f}" height="{BUSY_ROW - 10}" '
            f'fill="{_color(stage, i)}" shape-rendering="crispEdges"/>'
            f'<text class="count" x="{px(busy) + 4:.1f}" y="{y + BUSY_ROW / 2 + 4:.1f}">{_num(busy)} s</text>'
            "</g>")
    if has_wall:
        x = px(float(wall))
        parts.append(f'<line class="wall" x1="{x:.1f}" x2="{x:.1f}" y1="{pad_t - 4}" y2="{h - pad_b}"/>'
                     f'<text class="tick" x="{x:.1f}" y="{pad_t - 7}" text-anchor="middle">wall {_num(float(wall))} s'
                     '</text>')
    parts.append(f'<line class="axis" x1="{BUSY_L}" x2="{BUSY_L}" y1="{pad_t}" y2="{h - pad_b}"/>'
                 f'<text class="axis-title" x="{BUSY_L + iw / 2}" y="{h - 4}" text-anchor="middle">busy seconds</text>'
                 "</svg>")
    return "".join(parts)


def _bar_chart(name: str, counts: dict[str, int], what: str) -> str:
    """Documents per bucket: one bar (`g` with `data-bucket`, `data-count`) per bucket, zeros included."""
    items = list(counts.items())
    total = sum(int(c or 0) for _, c in items)
    step = _nice_max(max((int(c or 0) for _, c in items), default=0) / 4)
    top = 4 * max(1, step if step != 2.5 else 5)  # whole-number ticks: documents are counted
    H = HIST_H  # a shorter chart than the timelines
    iw, ih = W - PAD_L - PAD_R, H - PAD_T - PAD_B
    slot = iw / max(len(items), 1)
    parts = [f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {W} {H}" role="img" '
             f'aria-label="documents per {esc(what)}">']
    for k in range(5):
        v = top * k / 4
        y = PAD_T + ih * (1 - v / top)
        parts.append(f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick(v)}</text>')
    for i, (bucket, count) in enumerate(items):
        count = int(count or 0)
        h = ih * count / top
        x = PAD_L + i * slot
        share = f"{100 * count / total:.1f}%" if total else "0%"
        parts.append(
            f'<g data-bucket="{esc(bucket)}" data-count="{count}">'
            f'<title>{esc(bucket)} {esc(what)}: {count:,} documents ({share})</title>'
            f'<rect class="bar" x="{x + slot * 0.12:.1f}" y="{PAD_T + ih - h:.1f}" width="{slot * 0.76:.1f}" '
            f'height="{h:.1f}"/>'
            f'<text class="count" x="{x + slot / 2:.1f}" y="{PAD_T + ih - h - 4:.1f}" '
            f'text-anchor="middle">{_num(count) if count else ""}</text>'
            f'<text class="tick" x="{x + slot / 2:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">{esc(bucket)}</text>'
            f"</g>")
    parts.append(f'<line class="axis" x1="{PAD_L}" x2="{W - PAD_R}" y1="{H - PAD_B}" y2="{H - PAD_B}"/>'
                 f'<text class="axis-title" x="{PAD_L + iw / 2}" y="{H - 4}" text-anchor="middle">{esc(what)}</text>'
                 "</svg>")
    return "".join(parts)


# --- sections ---------------------------------------------------------------------------------------

def _header(s: dict) -> str:
    status = str(s.get("status", "unknown"))
    model = s.get("model")
    meta = [("model", model), ("revision", s.get("model_revision")), ("head", s.get("head")),
            ("granularity", s.get("granularity")), ("run", s.get("run_id"))]
    meta_html = "".join(f'<span class="meta"><b>{esc(k)}</b> <span data-key="{esc(k if k != "run" else "run_id")}">'
                        f"{esc(v)}</span></span>" for k, v in meta if v not in (None, ""))
    wall = s.get("wall_seconds")
    cards = [
        ("rows read", _fig("rows_read", s.get("rows_read"))),
        ("rows written", _fig("rows_written", s.get("rows_written"))),
        ("rows errored", _fig("rows_errored", s.get("rows_errored"))),
        ("output rows", _fig("output_rows", s.get("output_rows"))),
        ("wall time", _fig("wall_seconds", wall, f"{_num(wall, 1)} s") +
         (f'<small>{_duration(wall)}</small>' if _duration(wall) else "")),
        ("tokens / s", _fig("tokens_per_second", s.get("tokens_per_second"), _num(s.get("tokens_per_second"), 1))),
        ("tokens", _fig("tokens", s.get("tokens"))),
        ("windows", _fig("windows", s.get("windows"))),
    ]
    if s.get("model_tokens_per_second") is not None:
        cards.append(("model tokens / s", _fig("model_tokens_per_second", s["model_tokens_per_second"],
                                               _num(s["model_tokens_per_second"], 1))))
    for key, label in (("shards", "shards"), ("shards_run", "shards run"), ("shards_resumed", "shards resumed")):
        if key in s:
            cards.append((label, _fig(key, s[key])))
    cards_html = "".join(f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'
                         for k, v in cards)
    cls = "ok" if status == "complete" else "warn"
    return (f'<header><h1>Run report <span class="status {cls}" data-key="status">{esc(status)}</span></h1>'
            f'<div class="metas">{meta_html}</div><div class="cards">{cards_html}</div></header>')


def _throughput(s: dict) -> str:
    timeline = s.get("timeline") or {}
    stages = s.get("stages") or {}
    bucket = timeline.get("bucket_seconds") or 0
    rows = {k: v for k, v in (timeline.get("rows") or {}).items() if v}
    tokens = {k: v for k, v in (timeline.get("tokens") or {}).items() if v}
    out = ['<section><h2>Throughput over time</h2><div class="timing"><div>']
    if rows and bucket > 0:
        axis = _axis(s, rows, bucket)
        out.append(f'<h3>rows / s per stage <small>({_num(float(bucket), 1)} s buckets)</small></h3>')
        out.append(_line_chart("rows", rows, "rows/s", axis))
        if tokens:
            out.append('<h3>tokens / s per stage</h3>')
            out.append(_line_chart("tokens", tokens, "tokens/s", axis._replace(order=[*axis.order, *(t for t in tokens if t not in axis.order)])))
    else:
        out.append('<p class="none">No stage timing in this summary: this run computed nothing (every shard '
                   'was done already), or the summary predates stage timing.</p>')
    out.append("</div>")
    if any(isinstance(st, dict) and st.get("busy_seconds") for st in stages.values()):
        out.append('<div><h3>busy time per stage <small>(summed over its workers)</small></h3>'
                   f'{_busy_chart(stages, s.get("wall_seconds"))}</div>')
    out.append("</div>")
    if stages:
        fields = ("rows", "tokens", "busy_seconds", "rows_per_second", "tokens_per_second")
        head = "".join(f"<th>{esc(f.replace('_', ' '))}</th>" for f in fields)
        body = []
        for i, (stage, st) in enumerate(stages.items()):
            st = st or {}
            cells = "".join(f'<td data-field="{esc(f)}" data-value="{esc(json.dumps(st.get(f)))}">'
                            f"{_num(st.get(f))}</td>" for f in fields)
            body.append(f'<tr data-stage="{esc(stage)}"><th><span class="swatch" '
                        f'style="background:{_color(stage, i)}"></span>{esc(stage)}</th>{cells}</tr>')
        out.append(f'<table class="stages"><thead><tr><th>stage</th>{head}</tr></thead>'
                   f'<tbody>{"".join(body)}</tbody></table>'
                   '<p class="note">Busy seconds are summed over a stage\'s workers; the rates are per busy '
                   'second (one worker\'s pace).</p>')
    out.append("</section>")
    return "".join(out)


def _distributions(s: dict) -> str:
    out = ['<section><h2>Documents</h2>']
    for key, title, what in (("document_tokens_histogram", "Length (tokens per document)", "tokens"),
                             ("windows_histogram", "Windows per document", "windows")):
        hist = s.get(key) or {}
        out.append(f'<h3>{esc(title)}</h3>')
        if any(int(v or 0) for v in hist.values()):
            out.append(_bar_chart(key, hist, what))
        elif key not in s:
            out.append(f'<p class="none">Not in this summary (no <code>{esc(key)}</code>).</p>')
        else:
            out.append('<p class="none">No documents counted in this summary.</p>')
    out.append(
        f'<p class="note">Largest document: {_fig("largest_document_tokens", s.get("largest_document_tokens"))} '
        f'tokens; truncated documents: {_fig("documents_truncated", s.get("documents_truncated"))}.</p></section>')
    return "".join(out)


def _padding(s: dict) -> str:
    tokens = int(s.get("tokens") or 0)
    pads = int(s.get("padded_token_slots") or 0)
    slots = tokens + pads
    real = 100 * tokens / slots if slots else 100.0
    waste = s.get("padding_waste")
    return (
        '<section><h2>Padding waste</h2>'
        f'<div class="stack" title="{real:.1f}% of the computed slots were real tokens">'
        f'<div class="real" style="width:{real:.2f}%"></div><div class="pad" style="width:{100 - real:.2f}%"></div></div>'
        f'<p><span class="swatch real"></span>real tokens {_fig("tokens", s.get("tokens"))} '
        f'<span class="swatch pad"></span>pad slots {_fig("padded_token_slots", s.get("padded_token_slots"))} '
        f'— {_fig("padding_waste", waste, _num(waste, 4))} pad slots per real token '
        f'({100 - real:.1f}% of the slots the model computed).</p></section>')


def _labels(s: dict) -> str:
    counts = s.get("label_counts") or {}
    out = ['<section><h2>Labels and entity types</h2>']
    if not counts:
        out.append('<p class="none">No labels for this head (or none counted in this summary).</p></section>')
        return "".join(out)
    items = sorted(counts.items(), key=lambda p: (-int(p[1] or 0), str(p[0])))
    total = sum(int(c or 0) for _, c in items)
    top = max(int(c or 0) for _, c in items) or 1
    rows = []
    for label, count in items[:MAX_LABELS]:
        count = int(count or 0)
        rows.append(f'<tr data-label="{esc(label)}"><th>{esc(label)}</th>'
                    f'<td class="barcell"><div class="hbar" style="width:{100 * count / top:.1f}%"></div></td>'
                    f'<td data-count="{count}">{_num(count)}</td><td>{100 * count / total:.1f}%</td></tr>')
    rest = items[MAX_LABELS:]
    if rest:
        n = sum(int(c or 0) for _, c in rest)
        rows.append(f'<tr class="rest"><th>{len(rest):,} more labels</th><td></td>'
                    f'<td data-key="labels_other" data-value="{n}">{_num(n)}</td><td>{100 * n / total:.1f}%</td></tr>')
    out.append(f'<table class="labels"><thead><tr><th>label</th><th></th><th>count</th><th>share</th></tr></thead>'
               f'<tbody>{"".join(rows)}</tbody></table></section>')
    return "".join(out)


def _errors(s: dict) -> str:
    errors = s.get("top_errors") or {}
    read = int(s.get("rows_read") or 0)
    out = [f'<section><h2>Errors by reason</h2><p>{_fig("rows_errored", s.get("rows_errored"))} of '
           f'{_num(read)} rows read became error rows (in <code>_errors/</code>, with their reasons).</p>']
    if errors:
        rows = "".join(f'<tr data-reason="{esc(r)}"><td class="reason">{esc(r)}</td>'
                       f'<td data-count="{int(n or 0)}">{_num(int(n or 0))}</td>'
                       f'<td>{(100 * int(n or 0) / read if read else 0):.2f}%</td></tr>' for r, n in errors.items())
        out.append('<table class="errors"><thead><tr><th>reason (most common)</th><th>rows</th>'
                   f'<th>of rows read</th></tr></thead><tbody>{rows}</tbody></table>')
    else:
        out.append('<p class="none">No errors.</p>')
    out.append("</section>")
    return "".join(out)


def _footer(s: dict) -> str:
    keys = ("input", "input_path", "output", "output_path", "fingerprint", "model_revision", "run_id")
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v if not isinstance(v, (dict, list)) else json.dumps(v))}</dd>"
                    for k in keys if (v := s.get(k)) not in (None, ""))
    return (f'<footer><dl>{items}</dl><p>Drawn from <code>_SUMMARY.json</code> beside this file; '
            'every figure here is a value of it.</p></footer>')


CSS = """
:root{--fg:#1f2328;--mut:#656d76;--bg:#fff;--card:#f6f8fa;--line:#d0d7de;--accent:#4e79a7;--pad:#e15759}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 6px}h2{font-size:18px;margin:0 0 10px;border-bottom:1px solid var(--line);
padding-bottom:4px}h3{font-size:14px;margin:12px 0 4px;color:var(--mut)}small{color:var(--mut);font-weight:normal}
section{margin:28px 0}.status{font-size:13px;vertical-align:middle;padding:2px 10px;border-radius:12px;color:#fff}
.status.ok{background:#2da44e}.status.warn{background:#bf8700}.metas{color:var(--mut);margin-bottom:14px}
.meta{margin-right:18px;word-break:break-all}.meta b{color:var(--fg);font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .k{color:var(--mut);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}.card small{display:block;font-size:12px}
.chart{width:100%;height:auto;display:block}.chart .grid{stroke:#eaeef2}.chart .axis{stroke:#8c959f}
.chart .tick{font-size:11px;fill:var(--mut)}.chart .axis-title{font-size:12px;fill:var(--mut)}
.chart .bar{fill:var(--accent)}.chart g:hover .bar{fill:#2f5d8a}.chart .count{font-size:11px;fill:var(--fg)}
.legend{margin:2px 0 4px}.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 5px 0 12px;
vertical-align:-1px}.legend .key{margin-right:14px;white-space:nowrap}.legend .sample{vertical-align:-2px;margin-right:4px}
.timing{display:grid;grid-template-columns:minmax(0,1fr) 300px;gap:0 24px;align-items:start}
@media (max-width:860px){.timing{grid-template-columns:minmax(0,1fr)}}
.chart .tick.end{fill:var(--fg);font-weight:600}.chart .wall{stroke:var(--fg);stroke-dasharray:4 3}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{padding:5px 8px;
border-bottom:1px solid #eaeef2;text-align:right}th:first-child,td:first-child{text-align:left}
thead th{color:var(--mut);font-weight:600;font-size:12px}.labels .barcell{width:45%}
.hbar{height:12px;background:var(--accent);border-radius:2px;min-width:1px}.reason{word-break:break-word}
.stack{display:flex;height:22px;border-radius:4px;overflow:hidden;border:1px solid var(--line)}
.stack .real,.swatch.real{background:var(--accent)}.stack .pad,.swatch.pad{background:var(--pad)}
.none,.note{color:var(--mut)}footer{margin-top:36px;color:var(--mut);font-size:12px;border-top:1px solid var(--line);
padding-top:10px}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:0}dt{font-weight:600}
dd{margin:0;word-break:break-all}code{background:var(--card);padding:0 4px;border-radius:4px}
"""


def render_report(summary: dict) -> str:
    """The page, from a summary dict (as in `_SUMMARY.json`); keys it lacks are shown as absent."""
    s = summary or {}
    title = f"Run report — {s.get('model', '')} {s.get('head', '')}".strip()
    body = "".join([_header(s), _throughput(s), _distributions(s), _padding(s), _labels(s), _errors(s), _footer(s)])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
