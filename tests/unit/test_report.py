"""`_REPORT.html` (pipeline.report): made from a summary built by the real shard statistics and totals,
rendered in headless Chromium; every figure on the page is the summary's, data strings are escaped."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline import columns as C
from pipeline.output import REPORT, SUCCESS, SUMMARY, OutputDir
from pipeline.markers import Marker
from pipeline.meter import StageMeter
from pipeline.report import PAD_L, PAD_R, STAGE_COLORS, W, render_report
from pipeline.sinks import Finalizing, WriteParts, finalize_shard
from pipeline.sources import Shard
from pipeline.stats import merge_stats
from pipeline.summary import build_summary, totals, write_complete

CHROMIUM = Path("/usr/bin/chromium")
XSS = "<script>alert(1)</script>"
STAGES = ("read", "tokenize", "predict", "postprocess", "write")


def _postprocessed(shard: int, docs: list[tuple], ) -> pa.Table:
    """A postprocessed sequence-classification batch; docs: (label or None for an error, tokens, windows, error)."""
    n = len(docs)
    return pa.table({
        "id": pa.array([shard * 1000 + i for i in range(n)], pa.int64()),
        "label": pa.array([d[0] for d in docs], pa.string()),
        "score": pa.array([None if d[0] is None else 0.9 for d in docs], pa.float32()),
        C.SHARD: pa.array([shard] * n, pa.int32()),
        C.ROW: pa.array(range(n), pa.int64()),
        C.ERROR: pa.array([d[3] for d in docs], pa.string()),
        C.N_TOKENS: pa.array([d[1] for d in docs], pa.int64()),
        C.PADDED_SLOTS: pa.array([d[1] // 4 for d in docs], pa.int64()),
        C.TRUNCATED: pa.array([d[2] > 1 for d in docs]),
        "_n_windows": pa.array([d[2] for d in docs], pa.int64()),
        "_documents": pa.array([1] * n, pa.int64()),
    })


def _timeline() -> dict:
    rows = {"read": [120, 80, 0, 0, 0, 0], "tokenize": [60, 100, 40, 0, 0, 0], "predict": [0, 40, 90, 50, 20, 0],
            "postprocess": [0, 30, 80, 60, 30, 0], "write": [0, 0, 50, 80, 50, 20]}
    tokens = {s: [r * 82 for r in rows[s]] for s in ("tokenize", "predict", "postprocess")}
    stages = {s: {"rows": sum(rows[s]), "tokens": sum(tokens[s]) if s in tokens else None, "busy_seconds": 1.5,
                  "rows_per_second": round(sum(rows[s]) / 1.5, 1),
                  "tokens_per_second": round(sum(tokens[s]) / 1.5, 1) if s in tokens else None} for s in STAGES}
    return {"stages": stages, "timeline": {"bucket_seconds": 2.0, "started_at": 1.7e9, "rows": rows, "tokens": tokens}}


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    """Two shards finalised for real (one from an earlier run, before the stats existed), then totals."""
    out = OutputDir(str(tmp_path_factory.mktemp("out")))
    a = [("positive", 12, 1, None), ("negative", 40, 1, None), (XSS, 700, 3, None), ("A&B \"q\"", 9000, 40, None),
         (None, 0, 0, 'line 5: invalid JSON (<b>"oops"</b>)'), ("positive", 16, 1, None)]
    b = [("positive", 17, 1, None), (None, 0, 0, "text is empty"), (None, 0, 0, "text is empty"),
         ("negative", 130, 2, None)]
    write = WriteParts(Finalizing(out, 100), {0: Shard(0, "a.jsonl", "jsonl", key="a"),
                                              1: Shard(1, "b.jsonl", "jsonl", key="b")})
    write(_postprocessed(0, a))
    write(_postprocessed(1, b))
    ma = finalize_shard(Finalizing(out, 100), Shard(0, "a.jsonl", "jsonl", key="a"), len(a))
    mb = finalize_shard(Finalizing(out, 100), Shard(1, "b.jsonl", "jsonl", key="b"), len(b))
    # Resumed: shard b's marker again, as written before the stats existed and read back by resume.
    old = Marker.from_json("_shards/b.json", "b", {k: v for k, v in mb.to_json().items() if k not in merge_stats([])})
    t = totals([ma, mb, old])
    s = build_summary(t, run={"model": "models/<demo>", "head": "sequence-classification", "run_id": "r-1",
                              "granularity": "document", "shards": 3, "shards_resumed": 1, "shards_run": 2},
                      wall=12.3456, tokens_this_run=t["tokens"])
    # The totals' distributions and this run's timing, as the summary carries them.
    s.update({k: t[k] for k in merge_stats([])}, **_timeline())
    assert s["label_counts"] == {"positive": 3, "negative": 2, XSS: 1, 'A&B "q"': 1}  # shard b twice
    assert s["top_errors"] == {"text is empty": 4, 'invalid JSON (<b>"oops"</b>)': 1}
    return s


class _Dom(HTMLParser):
    """What the tests look at: figures by data-key, label and error rows, histogram bars, chart lines."""

    def __init__(self):
        super().__init__()
        self.keys: dict[str, list[tuple[str | None, str]]] = {}
        self.labels: dict[str, int] = {}
        self.reasons: dict[str, int] = {}
        self.buckets: dict[str, dict[str, int]] = {}
        self.lines: dict[str, list[str]] = {}
        self.stage_cells: dict[tuple[str, str], str | None] = {}
        self.busy: dict[str, str] = {}  # stage -> data-busy-seconds of its bar
        self._open: list[tuple[str, dict]] = []
        self._text: dict[int, list[str]] = {}
        self._chart = self._row = self._row_kind = self._stage = None
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.scripts += tag == "script"
        if tag == "svg":
            self._chart = a.get("data-chart")
        if tag == "polyline":
            self.lines.setdefault(self._chart, []).append(a["data-stage"])
        if tag == "g" and "data-busy-seconds" in a:
            self.busy[a["data-stage"]] = a["data-busy-seconds"]
        if tag == "g" and "data-bucket" in a:
            self.buckets.setdefault(self._chart, {})[a["data-bucket"]] = int(a["data-count"])
        if tag == "tr":
            self._row, self._row_kind = ((a["data-label"], "label") if "data-label" in a
                                         else (a["data-reason"], "reason") if "data-reason" in a else (None, None))
            self._stage = a.get("data-stage")
        if tag == "td" and "data-count" in a and self._row_kind:
            (self.labels if self._row_kind == "label" else self.reasons)[self._row] = int(a["data-count"])
        if tag == "td" and "data-field" in a and self._stage:
            self.stage_cells[(self._stage, a["data-field"])] = a["data-value"]
        if "data-key" in a:
            self._open.append((a["data-key"], a))
            self._text[len(self._open)] = []
        else:
            self._open.append(("", a))

    def handle_endtag(self, tag):
        if tag in ("br", "meta", "line", "rect"):  # void / self-closed in the page
            return
        key, a = self._open.pop()
        text = "".join(self._text.pop(len(self._open) + 1, [])) if key else ""
        if key:
            self.keys.setdefault(key, []).append((a.get("data-value"), text.strip()))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._open.pop()

    def handle_data(self, data):
        for texts in self._text.values():
            texts.append(data)


def _parse(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: install Debian's chromium; .ci/run does")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def page(summary, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / REPORT
    path.write_text(render_report(summary))
    return path


def test_the_page_in_chromium_shows_the_summarys_figures(page, summary, tmp_path):
    dom = _parse(_chromium(tmp_path, "--dump-dom", page.as_uri()).stdout)  # the DOM after the page ran
    for key in ("rows_read", "rows_written", "rows_errored", "output_rows", "tokens", "padded_token_slots",
                "padding_waste", "windows", "wall_seconds", "tokens_per_second", "documents_truncated",
                "largest_document_tokens", "shards", "shards_run", "shards_resumed"):
        assert key in dom.keys, f"{key} is not on the page"
        for value, text in dom.keys[key]:
            assert json.loads(value) == summary[key], key
            shown = float(re.sub(r"[^\d.]", "", text.split()[0]))
            assert shown == pytest.approx(summary[key], rel=0.01, abs=0.01), (key, text)
    assert {text for _, text in dom.keys["status"]} == {summary["status"]}
    assert {text for _, text in dom.keys["model"]} == {"models/<demo>"}
    assert summary["rows_read"] == 14 and summary["rows_errored"] == 5 and summary["wall_seconds"] == 12.346

    assert dom.labels == summary["label_counts"]
    assert dom.reasons == summary["top_errors"]
    assert dom.buckets["document_tokens_histogram"] == summary["document_tokens_histogram"]
    assert dom.buckets["windows_histogram"] == summary["windows_histogram"]
    assert summary["document_tokens_histogram"]["<=16"] == 2 and summary["document_tokens_histogram"]["8193+"] == 1
    assert summary["windows_histogram"]["17+"] == 1

    # One line per stage of the timeline; the token chart for the stages that count tokens.
    assert dom.lines["rows"] == list(summary["timeline"]["rows"])
    assert dom.lines["tokens"] == list(summary["timeline"]["tokens"])
    for stage, st in summary["stages"].items():
        for field in ("rows", "tokens", "busy_seconds", "rows_per_second", "tokens_per_second"):
            assert json.loads(dom.stage_cells[(stage, field)]) == st[field]
    assert {s: json.loads(v) for s, v in dom.busy.items()} == {s: st["busy_seconds"] for s, st in
                                                                summary["stages"].items()}  # one bar per stage
    assert dom.scripts == 0


def test_the_page_is_self_contained_and_escapes_data_strings(page, summary):
    html = page.read_text()
    assert not re.search(r"https?:|//[a-z]|@import|url\(|<link|<img|<iframe", html, re.I)
    assert "<script" not in html and XSS not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<b>"oops"' not in html and "&lt;b&gt;&quot;oops&quot;&lt;/b&gt;" in html
    assert 'data-label="A&amp;B &quot;q&quot;"' in html and "models/&lt;demo&gt;" in html
    assert _parse(html).labels == summary["label_counts"]  # the escaped labels read back as the data


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the RGB(A) rows of an 8-bit PNG (enough for Chromium's screenshots)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, color = ihdr[:4]
    assert depth == 8 and color in (2, 6), f"unexpected PNG format {ihdr}"
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, ul = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + left) & 255
            elif f == 2:
                line[i] = (line[i] + up) & 255
            elif f == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif f == 4:
                p = left + up - ul
                pa_, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                line[i] = (line[i] + (left if pa_ <= pb and pa_ <= pc else up if pb <= pc else ul)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(b for j, b in enumerate(line) if j % 4 != 3))
        prev = line
    return width, height, rows


def test_the_screenshot_shows_the_charts(page, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri())
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    pixels = {row[i : i + 3] for row in rows[::2] for i in range(0, len(row), 6)}
    assert len(pixels) > 50, "the screenshot is (nearly) blank"
    white = sum(row.count(b"\xff\xff\xff") for row in rows[::4])
    assert white < 0.97 * (width * height / 4)
    for stage, color in STAGE_COLORS.items():  # each stage's line (and legend) is drawn in its colour
        rgb = bytes.fromhex(color[1:])
        assert any(rgb in row for row in rows), f"{stage}'s colour {color} is not in the screenshot"


def test_a_summary_without_timing_or_distributions_still_renders():
    html = render_report({"status": "complete", "rows_read": 0, "rows_written": 0, "rows_errored": 0,
                          "stages": {}, "timeline": {}, "top_errors": {}})
    dom = _parse(html)
    assert "No stage timing" in html and not dom.lines and not dom.buckets and not dom.labels
    assert json.loads(dom.keys["rows_read"][0][0]) == 0
    assert "No errors." in html and "No labels" in html
    assert render_report({}).startswith("<!DOCTYPE html>")


def test_write_complete_writes_the_report_beside_the_summary(tmp_path, summary):
    out = OutputDir(str(tmp_path))
    write_complete(out, summary)
    assert json.loads((tmp_path / SUMMARY).read_text()) == json.loads(json.dumps(summary))
    assert (tmp_path / REPORT).read_text() == render_report(summary)
    assert (tmp_path / SUCCESS).exists()


# --- a run of a few seconds (issue 21): busy bars beside the timeline, the axis to the wall time, lines
# that coincide told apart -------------------------------------------------------------------------------

class _Svg(HTMLParser):
    """Each chart's elements in drawing order, as (tag, attributes, text), and the legends' keys."""

    def __init__(self):
        super().__init__()
        self.charts: dict[str, list[tuple[str, dict, list[str]]]] = {}
        self.legend: list[tuple[str, str, dict]] = []  # (stage, tag, attributes) of each key's sample
        self._chart = self._key = None
        self._open: list[tuple[str, dict, list[str]]] = []

    def handle_starttag(self, tag, attrs, closed=False):
        a = dict(attrs)
        if tag == "svg" and "data-chart" in a:
            self._chart = a["data-chart"]
            self.charts[self._chart] = []
            return
        if tag == "span" and a.get("class") == "key":
            self._key = a["data-stage"]
        if self._key and tag in ("line", "path"):
            self.legend.append((self._key, tag, a))
        if self._chart:
            el = (tag, a, [])
            self.charts[self._chart].append(el)
            if not closed:
                self._open.append(el)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs, closed=True)

    def handle_endtag(self, tag):
        if tag == "svg" and self._chart and not self._open:
            self._chart = None
        elif tag == "span" and self._key and not self._chart:
            self._key = None
        elif self._open and self._open[-1][0] == tag:
            self._open.pop()

    def handle_data(self, data):
        for _, _, text in self._open:
            text.append(data)

    def els(self, chart: str, tag: str, attr: str | None = None) -> list[tuple[dict, str]]:
        return [(a, "".join(t).strip()) for g, a, t in self.charts[chart] if g == tag and (attr is None or attr in a)]


def _svg(html: str) -> _Svg:
    svg = _Svg()
    svg.feed(html)
    return svg


def _short_run(wall: float = 3.2) -> dict:
    """A 3.2 s run timed by the real StageMeter (2 s buckets: two of them, the second cut by the wall
    time); predict and postprocess finish the same rows at the same moments, so their lines coincide."""
    meter = StageMeter(started_at=100.0, bucket_seconds=2.0)
    for stage, finished_at, seconds, rows, tokens in (
            ("read", 100.4, 0.6, 50, 0), ("tokenize", 101.0, 1.0, 40, 3200), ("tokenize", 102.4, 0.4, 10, 800),
            ("predict", 101.5, 1.2, 20, 1600), ("predict", 103.0, 1.7, 30, 2400),
            ("postprocess", 101.5, 0.5, 20, 1600), ("postprocess", 103.0, 0.6, 30, 2400),
            ("write", 102.8, 0.9, 50, 0)):
        meter.record(stage, finished_at, seconds, rows, tokens)
    return build_summary(totals([]), run={"model": "m", "head": "sequence-classification"}, wall=wall,
                         tokens_this_run=4000, measured=meter.snapshot())


def _points(a: dict) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in a["points"].split()]


def test_a_short_runs_time_axis_ends_at_its_wall_time():
    s = _short_run()
    assert s["wall_seconds"] == 3.2 and s["timeline"]["rows"]["write"] == [0, 50]  # 2 buckets: 4 s > 3.2 s
    svg = _svg(render_report(s))
    for chart in ("rows", "tokens"):
        ticks = svg.els(chart, "text", "data-t")
        assert ticks, f"the {chart} chart's x ticks say no time (data-t)"
        last, text = max(ticks, key=lambda e: float(e[0]["data-t"]))
        assert float(last["data-t"]) == 3.2 and last is ticks[-1][0], chart  # the axis' last tick: the wall time
        assert text.endswith("3.20 s") and float(last["x"]) == W - PAD_R, (chart, text, last)
        (key, _), = svg.els(chart, "tspan", "data-key")
        assert key["data-key"] == "wall_seconds" and json.loads(key["data-value"]) == 3.2
        assert [float(a["data-t"]) for a, _ in ticks] == [0, 1, 2, 3.2]  # 3 would crowd the end's label
        for line, _ in svg.els(chart, "polyline"):  # every line runs to the end of the axis, not past it
            assert max(x for x, _ in _points(line)) == pytest.approx(W - PAD_R, abs=0.05), line["data-stage"]
    # The second bucket is cut at 3.2 s: its 50 rows are a rate over its 1.2 s shown.
    (write, title), = [(a, t) for a, t in svg.els("rows", "polyline") if a["data-stage"] == "write"]
    assert "peak 41.7 rows/s" in title

    # A run longer than its buckets: the axis still runs to the wall time, past the lines' end.
    svg = _svg(render_report(_short_run(wall=9.5)))
    ticks = svg.els("rows", "text", "data-t")
    assert ticks[-1][0]["data-t"] == "9.5" and ticks[-1][1].endswith("9.50 s")
    ends = {a["data-stage"]: max(x for x, _ in _points(a)) for a, _ in svg.els("rows", "polyline")}
    assert list(ends.values()) == [pytest.approx(PAD_L + (W - PAD_L - PAD_R) * 4 / 9.5, abs=0.05)] * 5
    # No wall time in the summary: the axis ends at the last bucket.
    no_wall = {k: v for k, v in _short_run().items() if k != "wall_seconds"}
    assert _svg(render_report(no_wall)).els("rows", "text", "data-t")[-1][0]["data-t"] == "4"


def test_each_stage_has_a_busy_bar_with_its_seconds():
    s = _short_run()
    html = render_report(s)
    svg = _svg(html)
    bars = svg.els("busy", "g", "data-busy-seconds")
    assert [a["data-stage"] for a, _ in bars] == list(s["stages"]) == ["read", "tokenize", "predict", "postprocess",
                                                                       "write"]
    widths = {}
    for a, text in bars:
        stage, busy = a["data-stage"], s["stages"][a["data-stage"]]["busy_seconds"]
        assert json.loads(a["data-busy-seconds"]) == busy
        assert text.startswith(f"{stage}: busy {busy:.2f} s, summed over its workers"), text  # its <title>
        assert text.endswith(f"{stage}{busy:.2f} s"), text  # its name and its seconds, written by the bar
    for a, _ in svg.els("busy", "rect"):
        widths[a["fill"]] = float(a["width"])
    assert widths == {STAGE_COLORS[st]: pytest.approx(widths[STAGE_COLORS["predict"]] * b["busy_seconds"] / 2.9,
                                                      abs=0.15) for st, b in s["stages"].items()}
    (wall, label), = [(a, t) for a, t in svg.els("busy", "text") if t.startswith("wall")]
    assert label == "wall 3.20 s"
    # Beside the timeline: in one grid with the rate charts.
    timing = html[html.index('<div class="timing">'):]
    assert timing.index('data-chart="rows"') < timing.index('data-chart="busy"') < timing.index("</section>")


def test_lines_that_coincide_stay_distinguishable():
    s = _short_run()
    svg = _svg(render_report(s))
    for chart in ("rows", "tokens"):
        els = svg.charts[chart]
        lines = [a for g, a, _ in els if g == "polyline"]
        marks = {a["data-stage"]: a for g, a, _ in els if g == "path" and "data-marker" in a}
        stages = [a["data-stage"] for a in lines]
        assert stages == list(s["timeline"][chart]) and set(marks) == set(stages)
        dashes = [a.get("stroke-dasharray", "") for a in lines]
        assert len(set(dashes)) == len(lines), dashes  # a dash pattern of its own each
        assert len({m["data-marker"] for m in marks.values()}) == len(lines)  # and a marker shape
        assert all(m["d"] for m in marks.values())
        # Drawn widest and solid first, each later line thinner and dashed over it; markers over every line.
        widths = [float(a["stroke-width"]) for a in lines]
        assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
        assert (dashes[0] == "") == (chart == "rows") and all(dashes[1:])
        kinds = [g for g, a, _ in els if g in ("polyline", "path")]
        assert kinds == ["polyline"] * len(lines) + ["path"] * len(lines)
        # predict and postprocess coincide: the same points, yet their markers sit at different places.
        same = {a["data-stage"]: a["points"] for a in lines}
        assert same["predict"] == same["postprocess"]
        at = {st: set(re.findall(r"M(-?[\d.]+),", marks[st]["d"])) for st in ("predict", "postprocess")}
        assert at["predict"] and at["postprocess"] and not at["predict"] & at["postprocess"]
        # A stage looks the same in both charts and in the legends.
        for a in lines:
            st = a["data-stage"]
            (rows_line,) = [r for r in svg.els("rows", "polyline") if r[0]["data-stage"] == st]
            assert {k: rows_line[0].get(k) for k in ("stroke", "stroke-dasharray", "stroke-width")} == \
                   {k: a.get(k) for k in ("stroke", "stroke-dasharray", "stroke-width")}
            keys = [k for k in svg.legend if k[0] == st and k[1] == "line"]
            assert keys and all(k[2]["stroke"] == a["stroke"] and k[2].get("stroke-dasharray") ==
                                a.get("stroke-dasharray") for k in keys)


def test_a_short_runs_page_in_chromium_draws_the_busy_bars_beside_the_timeline(tmp_path):
    s = _short_run()
    page = tmp_path / REPORT
    page.write_text(render_report(s))
    shot = tmp_path / "short.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1000", page.as_uri())
    width, _, rows = _png_pixels(shot.read_bytes())
    for stage, color in STAGE_COLORS.items():
        rgb = bytes.fromhex(color[1:])
        block = []  # rows of the screenshot with a run of at least 14 px of the stage's colour, in the right part
        for y, row in enumerate(rows):
            px = [row[i : i + 3] == rgb for i in range(0, len(row), 3)]
            run = best = start = 0
            for x, hit in enumerate(px):
                run = run + 1 if hit else 0
                if run > best:
                    best, start = run, x - run + 1
            if best >= 14 and start > 0.6 * width:
                block.append(y)
        assert len(block) >= 10, f"{stage}'s busy bar ({color}) is not drawn beside the timeline"
