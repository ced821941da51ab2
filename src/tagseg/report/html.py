"""The report page: one self-contained HTML file (inline CSS, SVG, base64 images, a little JS).

Sections (element ids): ``summary``, ``iou`` (table ``iou-table``), ``confusion``, ``curves``,
``samples`` (table ``samples-grid``), ``config``; ``notes`` lists what was missing. A Content
Security Policy forbids every network request, so the page cannot depend on anything outside
itself. The inline script only adds table sorting; everything is readable without it.
"""

from __future__ import annotations

import datetime as _dt
import math
from html import escape
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import tagseg
from tagseg.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from tagseg.errors import TagsegError
from tagseg.metrics.contour import j_and_f
from tagseg.report.collect import (EvalResult, RunContents, collect_run, data_section, load_dataset_index,
                                    numeric_history_keys)
from tagseg.report.figures import heatmap_svg, hex_color, line_chart_svg, text_color_on
from tagseg.report.samples import SampleCell, SampleRow, build_sample_rows, order_ids
from tagseg.utils.io import atomic_path

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

CSS = """
:root { --fg:#1b1f24; --muted:#5f6b76; --line:#d8dde3; --bg:#fff; --soft:#f4f6f8; --accent:#2171b5; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--fg); background:var(--bg); }
header { padding:18px 28px 10px; border-bottom:1px solid var(--line); background:var(--soft); }
h1 { margin:0 0 4px; font-size:22px; }
h2 { font-size:18px; margin:0 0 10px; padding-top:6px; }
h3 { font-size:15px; margin:14px 0 6px; }
main { padding:8px 28px 40px; max-width:1500px; }
section { margin:22px 0 30px; }
.meta { color:var(--muted); margin:0 0 8px; }
.meta code { color:var(--fg); }
nav a { margin-right:14px; color:var(--accent); text-decoration:none; }
nav a:hover { text-decoration:underline; }
.note { color:var(--muted); font-size:13px; }
.warn { background:#fff8e1; border:1px solid #f0d98c; padding:8px 12px 8px 28px; border-radius:6px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; }
.card { border:1px solid var(--line); border-radius:8px; padding:10px 14px; min-width:220px; background:#fff; }
.card .label { font-weight:600; }
.card .sub { color:var(--muted); font-size:12px; word-break:break-all; }
.card .big { font-size:26px; font-weight:600; margin:4px 0 2px; }
.card dl { display:grid; grid-template-columns:auto auto; gap:0 12px; margin:4px 0 0; font-size:13px; }
.card dt { color:var(--muted); } .card dd { margin:0; text-align:right; font-variant-numeric:tabular-nums; }
table { border-collapse:collapse; }
th, td { border:1px solid var(--line); padding:3px 8px; }
th { background:var(--soft); text-align:left; font-weight:600; vertical-align:bottom; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.na { color:#9aa4ad; }
tfoot td { font-weight:600; background:var(--soft); }
html.js th[data-sort] { cursor:pointer; }
html.js th[data-sort]::after { content:" \\2195"; color:#9aa4ad; font-weight:normal; }
html.js th[aria-sort=ascending]::after { content:" \\2191"; color:var(--fg); }
html.js th[aria-sort=descending]::after { content:" \\2193"; color:var(--fg); }
.swatch { display:inline-block; width:12px; height:12px; border:1px solid #777; vertical-align:-2px;
          margin-right:5px; border-radius:2px; }
.chip { display:inline-block; padding:0 6px; margin:1px 2px; border-radius:9px; font-size:12px;
        border:1px solid rgba(0,0,0,.25); white-space:nowrap; }
.legend { display:flex; flex-wrap:wrap; gap:4px 14px; margin:6px 0 12px; font-size:13px; }
figure { margin:0 24px 18px 0; display:inline-block; vertical-align:top; max-width:100%; overflow-x:auto; }
figcaption { color:var(--muted); font-size:13px; margin-bottom:4px; }
.charts { display:flex; flex-wrap:wrap; gap:14px; }
svg text { font-family:inherit; }
svg .tick { font-size:10px; fill:#333; } svg .muted { fill:#8a949d; }
svg .axis-title { font-size:11px; fill:#333; } svg .chart-title { font-size:12px; font-weight:600; fill:#111; }
svg .grid { stroke:#e6e9ed; } svg .marker { stroke:#999; stroke-dasharray:4 3; }
#samples-grid td { vertical-align:top; }
#samples-grid img { display:block; }
#samples-grid img.mask { image-rendering:pixelated; }
.cell-caption { font-size:12px; color:var(--muted); margin-top:2px; font-variant-numeric:tabular-nums; }
.missing { width:120px; height:60px; display:flex; align-items:center; justify-content:center; text-align:center;
           background:var(--soft); color:var(--muted); font-size:12px; padding:4px; }
.rank { color:var(--muted); font-size:12px; }
.id { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:12px; }
pre { background:var(--soft); padding:10px; overflow:auto; max-height:480px; font-size:12px; }
footer { color:var(--muted); font-size:12px; padding:0 28px 24px; }
.scroll { overflow-x:auto; max-width:100%; }
"""

SORT_JS = """
(function () {
  document.documentElement.classList.add("js");
  function key(cell) {
    var v = cell.getAttribute("data-value");
    return v === null ? cell.textContent.trim() : v;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      var kind = th.getAttribute("data-sort");
      if (!kind) { return; }
      th.tabIndex = 0;
      th.title = "sort by this column";
      function sortBy() {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (kind === "num") {
            var xe = x === "", ye = y === "";
            if (xe || ye) { return xe === ye ? 0 : (xe ? 1 : -1); }
            return asc ? parseFloat(x) - parseFloat(y) : parseFloat(y) - parseFloat(x);
          }
          return asc ? x.localeCompare(y) : y.localeCompare(x);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sortBy);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(); }
      });
    });
  });
})();
"""


def as_number(v: object) -> Optional[float]:
    """``v`` as a finite float, None for anything else (None, NaN, strings, booleans)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def pct(v: object, digits: int = 1) -> str:
    """A fraction as a percentage string ('–' when it is not a finite number)."""
    x = as_number(v)
    return "–" if x is None else f"{100 * x:.{digits}f}"


def _value_attr(v: object) -> str:
    x = as_number(v)
    return "" if x is None else repr(x)


def contour_of(summary: dict) -> Optional[dict]:
    """The contour-F result inside a metrics summary (any key whose value has per_class and mean_F)."""
    for key in ("contour", "contour_f", "boundary"):
        v = summary.get(key)
        if isinstance(v, dict) and "per_class" in v and "mean_F" in v:
            return v
    for v in summary.values():
        if isinstance(v, dict) and "per_class" in v and "mean_F" in v:
            return v
    return None


def j_and_f_of(summary: dict) -> Optional[float]:
    """J&F stored in the summary, else (mIoU + mean contour F) / 2 when both are there."""
    for key in ("j_and_f", "J&F", "jf"):
        if as_number(summary.get(key)) is not None:
            return as_number(summary[key])
    c = contour_of(summary)
    miou, mean_f = as_number(summary.get("miou")), as_number((c or {}).get("mean_F"))
    if miou is None or mean_f is None:
        return None
    try:
        return j_and_f(miou, mean_f)
    except TagsegError:
        return None


def eval_label(run: RunContents, ev: EvalResult) -> str:
    """'pseudo-mask (train)' for an eval.json beside a known mask folder, else its folder path."""
    for src in run.sources:
        if src.evaluation is ev:
            return f"{src.label} ({ev.split})" if ev.split else src.label
    folder = Path(ev.rel_path).parent.as_posix()
    return folder if folder != "." else "run folder"


def swatch(palette: Sequence[int], index: int) -> str:
    return f'<span class="swatch" style="background:{hex_color(palette, index)}"></span>'


def class_chip(name: str, palette: Sequence[int], index: int) -> str:
    fill = hex_color(palette, index)
    return f'<span class="chip" style="background:{fill};color:{text_color_on(fill)}">{escape(name)}</span>'


def class_legend(class_names: Sequence[str], palette: Sequence[int]) -> str:
    items = [f"<span>{swatch(palette, i)}{escape(n)}</span>" for i, n in enumerate(class_names)]
    items.append(f"<span>{swatch(palette, IGNORE_INDEX)}ignore / boundary (255)</span>")
    return f'<div class="legend" id="class-legend">{"".join(items)}</div>'


# --------------------------------------------------------------------------- sections


def header_html(run: RunContents, run_label: str, dataset: str, generated: str) -> str:
    meta = [f"run folder <code>{escape(run_label)}</code>"]
    if run.config_name:
        meta.append(f"config <code>{escape(run.config_name)}</code>")
    if run.split:
        meta.append(f"split <code>{escape(run.split)}</code>")
    if dataset:
        meta.append(f"dataset <code>{escape(dataset)}</code>")
    meta.append(f"written {escape(generated)}")
    links = [("summary", "Summary"), ("iou", "Per-class IoU"), ("confusion", "Confusion"),
             ("curves", "Training curves"), ("samples", "Samples"), ("config", "Config")]
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in links)
    return (f"<header><h1>tagseg report: {escape(run.name)}</h1><p class=\"meta\">{' · '.join(meta)}</p>"
            f"<nav>{nav}</nav></header>")


def notes_html(notes: Sequence[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{escape(n)}</li>" for n in notes)
    return f'<section id="notes"><ul class="warn">{items}</ul></section>'


def summary_html(run: RunContents) -> str:
    cards = []
    for n, ev in enumerate(run.evaluations):
        s = ev.summary
        rows = [("pixel accuracy", pct(s.get("pixel_accuracy"))), ("images", str(s.get("images", "–")))]
        c = contour_of(s)
        if c is not None:
            rows.append(("contour F", pct(c.get("mean_F"))))
            rows.append(("J&amp;F", pct(j_and_f_of(s))))
        classes = len(s.get("miou_classes") or [])
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        dataset = f" · {escape(str(s['dataset']))}" if s.get("dataset") else ""
        cards.append(
            f'<div class="card" id="summary-eval-{n}"><div class="label">{escape(eval_label(run, ev))}</div>'
            f'<div class="sub">{escape(ev.rel_path)}{dataset}</div>'
            f'<div class="big" data-value="{_value_attr(s.get("miou"))}">{pct(s.get("miou"))}'
            f'<span class="note"> mIoU % ({classes} classes)</span></div><dl>{dl}</dl></div>')
    if run.history:
        last = run.history[-1]
        seconds = sum(r.get("seconds", 0) for r in run.history if isinstance(r.get("seconds"), (int, float)))
        duration = f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
        rows = [("epochs logged", str(len(run.history))), ("training time", duration)]
        for key in ("total", "loss"):
            if isinstance(last.get(key), (int, float)):
                rows.append((f"last {'total ' if key == 'total' else ''}loss", f"{last[key]:.4g}"))
                break
        if isinstance(last.get("phase"), str):
            rows.append(("last phase", escape(last["phase"])))
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        cards.append(f'<div class="card" id="summary-training"><div class="label">training</div>'
                     f'<div class="sub">history.jsonl</div><dl>{dl}</dl></div>')
    body = f'<div class="cards">{"".join(cards)}</div>' if cards else \
        '<p class="note">No metrics and no training history in this run yet.</p>'
    return f'<section id="summary"><h2>Summary</h2>{body}</section>'


def _groups(evaluations: Sequence[EvalResult]) -> list[list[EvalResult]]:
    groups: dict[tuple, list[EvalResult]] = {}
    for ev in evaluations:
        groups.setdefault(tuple(ev.summary["class_names"]), []).append(ev)
    return list(groups.values())


def _bar_cell(v: object, cls: str = "num") -> str:
    x = as_number(v)
    if x is None:
        return f'<td class="{cls} na" data-value="">–</td>'
    w = max(0.0, min(100.0, 100 * x))
    style = f"background:linear-gradient(90deg,#d6e6f5 {w:.1f}%,transparent {w:.1f}%)"
    return f'<td class="{cls}" data-value="{_value_attr(v)}" style="{style}">{pct(v)}</td>'


def iou_table_html(run: RunContents, group: Sequence[EvalResult], palette: Sequence[int], table_id: str) -> str:
    """Per-class IoU (and contour F when present) of evaluations sharing a class list."""
    names = group[0].summary["class_names"]
    first = group[0].summary
    share = None
    try:
        rows = np.asarray(first.get("confusion") or [], dtype=np.float64)
        if rows.ndim == 2 and rows.shape[0] == len(names) and rows.sum() > 0:
            share = rows.sum(axis=1) / rows.sum()
    except (TypeError, ValueError):
        pass
    heads = ['<th data-sort="num" class="num">#</th>', '<th data-sort="text">class</th>']
    if share is not None:
        heads.append(f'<th data-sort="num" class="num" title="share of the ground-truth pixels of '
                     f'{escape(group[0].rel_path)}">GT pixels %</th>')
    contours = [contour_of(ev.summary) for ev in group]
    for ev, c in zip(group, contours):
        label = escape(eval_label(run, ev))
        heads.append(f'<th data-sort="num" class="num" title="{escape(ev.rel_path)}">{label}<br>IoU %</th>')
        if c is not None:
            heads.append(f'<th data-sort="num" class="num" title="{escape(ev.rel_path)}">{label}<br>contour F %</th>')
    body = []
    for i, name in enumerate(names):
        cells = [f'<td class="num" data-value="{i}">{i}</td>',
                 f'<td data-value="{escape(name)}">{swatch(palette, i) if i < 256 else ""}{escape(name)}</td>']
        if share is not None:
            cells.append(f'<td class="num" data-value="{_value_attr(share[i])}">{pct(share[i], 2)}</td>')
        for ev, c in zip(group, contours):
            cells.append(_bar_cell(ev.summary["iou"][i], "num iou"))
            if c is not None:
                entry = (c.get("per_class") or {}).get(name) or {}
                cells.append(_bar_cell(entry.get("F")) if i > 0 else '<td class="num na" data-value="">–</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    span = 3 if share is not None else 2
    foot = []
    for label, getter in (("mIoU", lambda s: s.get("miou")), ("pixel accuracy", lambda s: s.get("pixel_accuracy"))):
        cells = [f'<td colspan="{span}">{label}</td>']
        for ev, c in zip(group, contours):
            v = getter(ev.summary)
            cells.append(f'<td class="num" data-value="{_value_attr(v)}">{pct(v)}</td>')
            if c is not None:
                cells.append(f'<td class="num" data-value="{_value_attr(c.get("mean_F"))}">'
                             f'{pct(c.get("mean_F")) if label == "mIoU" else ""}</td>')
        foot.append(f"<tr>{''.join(cells)}</tr>")
    conventions = sorted({str(ev.summary.get("miou_convention")) for ev in group if ev.summary.get("miou_convention")})
    conv = "".join(f'<p class="note">mIoU: {escape(c)}.</p>' for c in conventions)
    return (f'<div class="scroll"><table class="sortable" id="{table_id}"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody><tfoot>{"".join(foot)}</tfoot></table></div>{conv}')


def iou_html(run: RunContents, palette: Sequence[int]) -> str:
    if not run.evaluations:
        return ('<section id="iou"><h2>Per-class IoU</h2><p class="note">No eval.json in this run: run '
                '<code>tagseg eval</code> on a mask folder to get per-class IoU.</p></section>')
    tables = []
    for n, group in enumerate(_groups(run.evaluations)):
        tid = "iou-table" if n == 0 else f"iou-table-{n + 1}"
        tables.append(iou_table_html(run, group, palette, tid))
    hint = '<p class="note">Values in %. Click a column header to sort (the page reads the same without scripts).</p>'
    return f'<section id="iou"><h2>Per-class IoU</h2>{hint}{"".join(tables)}</section>'


def confusion_html(run: RunContents) -> str:
    figures = []
    for n, ev in enumerate(run.evaluations):
        conf = ev.summary.get("confusion")
        if not conf:
            continue
        names = list(ev.summary["class_names"])
        try:
            m = np.asarray(conf, dtype=np.int64)
        except (TypeError, ValueError):
            run.notes.append(f"{ev.rel_path}: the confusion matrix is not a numeric table; not drawn")
            continue
        if m.ndim != 2:
            run.notes.append(f"{ev.rel_path}: the confusion matrix has shape {m.shape}; not drawn")
            continue
        cols = names + ["none (255)"] if m.shape[1] == len(names) + 1 else names
        if m.shape[1] == len(names) + 1 and not m[:, -1].any():
            m, cols = m[:, :-1], names
        label = eval_label(run, ev)
        try:
            svg = heatmap_svg(m, names, cols, svg_id=f"confusion-{n}", title=f"confusion matrix: {label}")
        except TagsegError as exc:
            run.notes.append(f"{ev.rel_path}: {exc}")
            continue
        figures.append(f"<figure><figcaption>{escape(label)} · {escape(ev.rel_path)} · "
                       f"{int(m.sum()):,} scored pixels</figcaption>{svg}</figure>")
    body = "".join(figures) or '<p class="note">No confusion matrix in the eval.json files of this run.</p>'
    return (f'<section id="confusion"><h2>Confusion matrices</h2><p class="note">Rows: ground truth; columns: '
            f'prediction. Each row is normalised by its ground-truth pixels; numbers are % of the row '
            f'(shown from 1 %); hover a cell for the pixel count.</p>{body}</section>')


CURVE_ORDER = ("total", "loss", "mce", "pce", "et", "l2")
CURVE_TAIL = ("lr", "lr_last", "seconds")
NOT_CURVES = ("step", "global_step", "pce_mce_ratio")  # counters, and a ratio of two plotted curves


def curves_html(run: RunContents) -> str:
    if not run.history:
        return ('<section id="curves"><h2>Training curves</h2><p class="note">No history.jsonl in this run: '
                'no training curves.</p></section>')
    hist = run.history
    epochs = [r.get("epoch") for r in hist]
    x = [float(e) for e in epochs] if all(isinstance(e, (int, float)) for e in epochs) else \
        [float(i + 1) for i in range(len(hist))]
    keys = numeric_history_keys(hist)
    keys = [k for k in keys if k not in NOT_CURVES]
    losses = [k for k in CURVE_ORDER if k in keys] + [k for k in keys if k not in CURVE_ORDER + CURVE_TAIL]
    tail = [k for k in CURVE_TAIL if k in keys]
    markers = []
    for i in range(1, len(hist)):
        if hist[i].get("phase") != hist[i - 1].get("phase") and isinstance(hist[i].get("phase"), str):
            markers.append((x[i], str(hist[i]["phase"])))
    titles = {"total": "total loss", "mce": "MCE loss", "pce": "PCE loss", "et": "equivariance loss (L_ET)",
              "l2": "L2 penalty", "lr": "learning rate", "lr_last": "learning rate (end of epoch)",
              "seconds": "seconds per epoch"}
    charts = []
    for n, key in enumerate(losses + tail):
        ys = [r.get(key) if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) else None
              for r in hist]
        charts.append(line_chart_svg(x, {key: ys}, title=titles.get(key, key), svg_id=f"curve-{n}", markers=markers))
    first_phase = hist[0].get("phase")
    phase_note = f" Dashed lines: start of a training phase (first: {escape(str(first_phase))})." if markers else ""
    return (f'<section id="curves"><h2>Training curves</h2><p class="note">Epoch means from history.jsonl '
            f'({len(hist)} epochs).{phase_note}</p><div class="charts">{"".join(charts)}</div></section>')


def _cell_html(cell: SampleCell, alt: str, mask: bool, caption: str = "") -> str:
    if cell.uri is None:
        return f'<td><div class="missing">{escape(cell.note or "missing")}</div></td>'
    cls = ' class="mask"' if mask else ""
    extra = f'<div class="cell-caption">{caption}</div>' if caption else ""
    if cell.note:
        extra += f'<div class="cell-caption">{escape(cell.note)}</div>'
    return (f'<td><img{cls} src="{cell.uri}" width="{cell.width}" height="{cell.height}" alt="{escape(alt)}">'
            f'{extra}</td>')


def samples_html(run: RunContents, rows: Sequence[SampleRow], total: int, order_text: str,
                 class_names: Sequence[str], palette: Sequence[int], index_note: str) -> str:
    head = '<section id="samples"><h2>Samples</h2>'
    if run.split is None:
        return (head + '<p class="note">No mask folders (pseudo/&lt;split&gt;/masks or '
                'predictions/&lt;split&gt;/masks) '
                'in this run: no samples.</p></section>')
    intro = (f'<p class="note">{len(rows)} of {total} images of <code>{escape(run.split)}</code>, '
             f'{escape(order_text)}. Numbers under a mask: its per-image mIoU % against the ground truth.</p>')
    if index_note:
        intro += f'<p class="note">{escape(index_note)}</p>'
    heads = ["<th>#</th>", "<th>image</th>", "<th>ground truth</th>"]
    heads += [f"<th>{escape(src.label)}<br><span class=\"note\">{escape(src.key)}</span></th>" for src in run.sources]
    heads.append("<th>classes</th>")
    body = []
    for rank, row in enumerate(rows, start=1):
        cells = [f'<td><div class="rank">{rank}</div><div class="id">{escape(row.id)}</div></td>',
                 _cell_html(row.image, f"image {row.id}", mask=False),
                 _cell_html(row.truth, f"ground truth {row.id}", mask=True)]
        for src, cell in zip(run.sources, row.outputs):
            caption = f"mIoU {pct(cell.miou)}" if cell.miou is not None else ""
            cells.append(_cell_html(cell, f"{src.label} {row.id}", mask=True, caption=caption))
        chips = "".join(class_chip(class_names[c] if c < len(class_names) else str(c), palette, c)
                        for c in row.classes)
        cells.append(f"<td>{chips}</td>")
        body.append(f'<tr id="sample-{escape(row.id)}">{"".join(cells)}</tr>')
    table = (f'<div class="scroll"><table id="samples-grid"><thead><tr>{"".join(heads)}</tr></thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    return head + intro + class_legend(class_names, palette) + table + "</section>"


def config_html(run: RunContents) -> str:
    if run.config_text is None:
        return '<section id="config"><h2>Config</h2><p class="note">No readable config.yaml in this run.</p></section>'
    return (f'<section id="config"><h2>Config</h2><details><summary>config.yaml</summary>'
            f'<pre>{escape(run.config_text)}</pre></details></section>')


# --------------------------------------------------------------------------- page


def render_report(run: RunContents, samples: int = 24, max_side: int = 200, data_root: Optional[str] = None,
                  generated: Optional[str] = None, overrides: Sequence[str] = ()) -> str:
    """The full HTML page for a collected run (see :func:`tagseg.report.collect.collect_run`).

    samples: number of sample rows (worst first when an eval.json has per-image scores);
    max_side: thumbnail size in px (longer side); data_root: dataset folder overriding the config's;
    overrides: ``data.key=value`` settings over the run's data section.
    """
    if samples < 0:
        raise TagsegError(f"--samples must be >= 0, got {samples}")
    index, index_note = None, ""
    if run.split is not None:
        try:
            index = load_dataset_index(run, data_root, overrides)
        except TagsegError as exc:
            index_note = f"Images and ground truth not shown: {exc}"
            run.notes.append(index_note)
    if index is not None:
        class_names, palette = list(index.class_names), list(index.palette)
    elif run.evaluations:
        class_names, palette = list(run.evaluations[0].summary["class_names"]), voc_palette()
    else:
        class_names, palette = list(VOC_CLASSES), voc_palette()
    rows: list[SampleRow] = []
    total, order_text = 0, ""
    if run.split is not None:
        ids, order_text = order_ids(run, index)
        total = len(ids)
        rows = build_sample_rows(run, index, ids[:samples], len(class_names), palette, max_side)
    dataset = index.name if index is not None else str(((run.config or {}).get("data") or {}).get("dataset", ""))
    generated = generated or _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    # sections that may add notes are rendered before the notes block
    sections = [summary_html(run), iou_html(run, palette), confusion_html(run), curves_html(run),
                samples_html(run, rows, total, order_text, class_names, palette, index_note),
                config_html(run)]
    notes = [n for n in run.notes if n != index_note] if index_note else list(run.notes)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>tagseg report: {escape(run.name)}</title><style>{CSS}</style></head><body>"
            + header_html(run, str(run.run_dir), dataset, generated)
            + "<main>" + notes_html(notes) + "".join(sections) + "</main>"
            + f"<footer>Written by tagseg {escape(tagseg.__version__)}. This page is self-contained: "
              "it loads nothing from the network.</footer>"
            + f"<script>{SORT_JS}</script></body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None, split: Optional[str] = None,
                 samples: int = 24, max_side: int = 200, data_root: Optional[str] = None,
                 overrides: Sequence[str] = ()) -> Path:
    """Collect ``run_dir`` and write its report (default ``run_dir/report.html``); returns the path."""
    data_section({}, None, overrides)  # a bad override stops here, not as a note on the page
    run = collect_run(run_dir, split)
    page = render_report(run, samples=samples, max_side=max_side, data_root=data_root, overrides=overrides)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
