"""`tagseg report`: the HTML page of a tiny real run (train -> pseudo-masks -> eval), its figures,
missing pieces, escaping, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import make_voc, write_mask
from tagseg.data.build import build_index
from tagseg.errors import TagsegError
from tagseg.evaluate.folder import evaluate_folder
from tagseg.report.collect import collect_run
from tagseg.report.html import render_report, write_report
from tagseg.cli import build_parser
from tagseg.report.figures import (
    fit_size, format_number, heatmap_svg, line_chart_svg, mask_data_uri, mask_thumbnail, nice_ticks,
    sequential_color,
)
from tagseg.metrics.scorer import image_miou
from tagseg.utils.io import read_mask, write_json

TINY = [
    "data.dataset=voc", "data.train_split=train", "data.pseudo_split=train", "data.image_size=64",
    "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
    "method.et_crop_size=32", "method.pce_threshold=0.3", "train.batch_size=2", "train.epochs=2", "train.cpu_threads=1",
    "train.warmup_epochs=1", "train.unfreeze_blocks=1", "pseudo.image_size=64", "seed=3", "name=tiny_run",
]
N_IMAGES = 6
SECTION_IDS = ["summary", "iou", "iou-table", "confusion", "confusion-0", "curves", "samples", "samples-grid",
               "class-legend", "config"]


class Elements(HTMLParser):
    """Collects (tag, attrs) of every element and the text inside elements with an id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def by_id(self) -> dict[str, tuple[str, dict]]:
        return {a["id"]: (t, a) for t, a in self.elements if "id" in a}


def parse(page: str) -> Elements:
    p = Elements()
    p.feed(page)
    return p


def table_rows(page: str, table_id: str, part: str = "tbody") -> list[list[tuple[str, str]]]:
    """Cells (data-value, text) of each row of a table section, from the page text."""
    table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S).group(0)
    section = re.search(rf"<{part}>(.*?)</{part}>", table, re.S).group(1)
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", section, re.S):
        cells = re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S)
        rows.append([(re.search(r'data-value="([^"]*)"', a).group(1) if "data-value" in a else None,
                      re.sub(r"<[^>]+>", "", t)) for a, t in cells])
    return rows


# --------------------------------------------------------------------------- a tiny real run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Train 2 epochs (warm-up + fine-tune) at 64 px, write pseudo-masks, a 'crf' sibling folder
    (here: the ground truth with dog and ignore set to background, so its scores are known), eval.json for both."""
    import torch

    from tagseg.config import load_config
    from tagseg.pseudo.generate import generate_pseudo_masks
    from tagseg.runner import RunOptions
    from tagseg.inference.loading import load_patch_classifier
    from tagseg.classify.trainer import Trainer

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("report")
    make_voc(base / "voc", n=N_IMAGES)
    cfg = load_config("tkpcl_voc", [f"data.root={base / 'voc'}", *TINY])
    run = base / "tiny_run"  # the report is titled by this folder's name
    Trainer(cfg, run, show_progress=False).fit()
    model, _, _ = load_patch_classifier(run / "model.safetensors")
    index = build_index(cfg.data, "train")
    pseudo = run / "pseudo" / "train"
    with torch.no_grad():
        generate_pseudo_masks(model, index, pseudo, cfg.pseudo, RunOptions(progress=False))
    summary = evaluate_folder(pseudo / "masks", index, progress=False)
    for key in ("contour", "contour_f", "j_and_f"):  # an eval.json without boundary scores
        summary.pop(key, None)
    write_json(pseudo / "eval.json", summary)
    (pseudo / "crf" / "masks").mkdir(parents=True)
    for rec in index.records:
        gt = read_mask(rec.mask_path, 21)
        write_mask(pseudo / "crf" / "masks" / f"{rec.id}.png", np.where((gt == 12) | (gt == 255), 0, gt))
    summary = evaluate_folder(pseudo / "crf" / "masks", index, progress=False)
    assert summary["contour"]["mean_F"] is not None
    write_json(pseudo / "crf" / "eval.json", summary)
    return run


@pytest.fixture(scope="module")
def tiny_page(tiny_run) -> str:
    path = write_report(tiny_run)
    assert path == tiny_run / "report.html"
    return path.read_text(encoding="utf-8")


def test_page_has_every_section_and_loads_nothing_external(tiny_page):
    ids = parse(tiny_page).by_id()
    for ident in SECTION_IDS:
        assert ident in ids, ident
    assert "confusion-1" in ids  # one heatmap per eval.json
    assert len([i for i in ids if i.startswith("curve-")]) == 7  # mce pce et l2 total lr seconds
    for tag, attrs in parse(tiny_page).elements:
        if tag in ("img", "script", "link", "iframe"):
            assert attrs.get("src", "data:").startswith("data:"), attrs
        if tag == "a":
            assert attrs["href"].startswith("#"), attrs
    assert "Content-Security-Policy" in tiny_page and "default-src 'none'" in tiny_page
    assert "tagseg report: tiny_run" in tiny_page
    assert "notes" not in parse(tiny_page).by_id()  # nothing is missing in this run


def test_iou_table_values_equal_the_json(tiny_run, tiny_page):
    pseudo = json.loads((tiny_run / "pseudo" / "train" / "eval.json").read_text())
    crf = json.loads((tiny_run / "pseudo" / "train" / "crf" / "eval.json").read_text())
    rows = table_rows(tiny_page, "iou-table")
    assert [r[1][1] for r in rows] == pseudo["class_names"]
    # columns: #, class, GT share, pseudo IoU, crf IoU, crf contour F (pseudo first: mask-folder order)
    for k, row in enumerate(rows):
        for (value, text), expected in ((row[3], pseudo["iou"][k]), (row[4], crf["iou"][k])):
            if expected is None:
                assert value == "" and text == "–"
            else:
                assert float(value) == expected and text == f"{100 * expected:.1f}"
    # the crf folder is the ground truth without the dog: every present class but dog is exact
    assert float(rows[8][4][0]) == 1.0 and float(rows[12][4][0]) == 0.0
    gt_pixels = np.asarray(pseudo["confusion"]).sum(axis=1)
    assert float(rows[8][2][0]) == pytest.approx(gt_pixels[8] / gt_pixels.sum())
    foot = table_rows(tiny_page, "iou-table", "tfoot")
    assert foot[0][0][1] == "mIoU"
    assert float(foot[0][1][0]) == pseudo["miou"] and float(foot[0][2][0]) == crf["miou"]
    assert float(foot[0][3][0]) == crf["contour"]["mean_F"]
    assert float(foot[1][1][0]) == pseudo["pixel_accuracy"]
    assert pseudo["miou_convention"] in tiny_page


def test_samples_are_worst_first_with_scores_from_the_masks(tiny_run, tiny_page):
    pseudo = json.loads((tiny_run / "pseudo" / "train" / "eval.json").read_text())
    expected_order = [r["id"] for r in pseudo["per_image"]]
    shown = re.findall(r'<tr id="sample-([^"]+)">', tiny_page)
    assert shown == expected_order[:N_IMAGES]
    scores = {r["id"]: r["miou"] for r in pseudo["per_image"]}
    crf_scores = {r["id"]: r["miou"] for r in json.loads(
        (tiny_run / "pseudo" / "train" / "crf" / "eval.json").read_text())["per_image"]}
    for image_id, row in zip(shown, table_rows(tiny_page, "samples-grid")):
        assert row[0][1].endswith(image_id)
        assert row[3][1] == f"mIoU {100 * scores[image_id]:.1f}"
        assert row[4][1] == f"mIoU {100 * crf_scores[image_id]:.1f}"
    # every image row has: photo (jpeg), ground truth + 2 masks (png), and a class chip per present class
    grid = re.search(r'<table id="samples-grid".*?</table>', tiny_page, re.S).group(0)
    assert grid.count('src="data:image/jpeg;base64,') == N_IMAGES
    assert grid.count('src="data:image/png;base64,') == 3 * N_IMAGES
    first = re.search(r'<tr id="sample-2008_000001">.*?</tr>', grid, re.S).group(0)  # odd id: cat and dog
    assert re.findall(r'class="chip"[^>]*>([^<]+)<', first)[:3] == ["background", "cat", "dog"]


def test_thumbnails_keep_class_indices_and_fit_the_size(tiny_run, tiny_page):
    uris = re.findall(r'<img class="mask" src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"', tiny_page)
    assert uris
    for data, w, h in uris:
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        assert im.mode == "P" and im.size == (int(w), int(h)) and max(im.size) == 200
        assert set(np.unique(np.asarray(im)).tolist()) <= {0, 8, 12, 255}


def test_sample_count_split_and_output_options(tiny_run, tmp_path):
    out = write_report(tiny_run, out=tmp_path / "r.html", samples=2, max_side=64)
    page = out.read_text(encoding="utf-8")
    assert len(re.findall(r'<tr id="sample-', page)) == 2
    assert "2 of 6 images" in page
    assert re.search(r'width="64" height="48"', page)
    with pytest.raises(TagsegError, match="no masks for split 'val'.*train"):
        write_report(tiny_run, out=tmp_path / "x.html", split="val")
    with pytest.raises(TagsegError, match="run folder not found"):
        write_report(tmp_path / "nope")


def test_cli_handler_writes_the_page(tiny_run, tmp_path, capsys):
    parser = build_parser()
    args = parser.parse_args(["report", str(tiny_run), "--out", str(tmp_path / "page.html"), "--samples", "3"])
    assert args.handler(args) == 0
    assert "report ->" in capsys.readouterr().out
    assert len(re.findall(r'<tr id="sample-', (tmp_path / "page.html").read_text(encoding="utf-8"))) == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["report", str(tiny_run), "--samples", "-1"])


# --------------------------------------------------------------------------- missing pieces, escaping


def test_missing_pieces_become_notes(tmp_path, tiny_run):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_run / "pseudo" / "train" / "masks", bare / "pseudo" / "train" / "masks")
    run = collect_run(bare)
    assert run.split == "train" and [s.label for s in run.sources] == ["pseudo-mask"]
    page = render_report(run, generated="now")
    ids = parse(page).by_id()
    assert all(i in ids for i in ("notes", "summary", "iou", "curves", "samples", "samples-grid", "config"))
    assert "no config.yaml" in page and "No history.jsonl in this run" in page
    assert "No eval.json in this run" in page and "in dataset order" in page
    assert page.count("dataset not available") == 2 * N_IMAGES  # photo and ground truth cells
    empty = render_report(collect_run(tmp_path / "bare" / "pseudo" / "train" / "masks"), generated="now")
    assert "No metrics and no training history" in empty and "no samples" in empty


def test_the_report_is_titled_by_the_run_folder_not_the_config(tmp_path, tiny_run):
    run = tmp_path / "seed-2"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "tb", "*.safetensors"))
    page = render_report(collect_run(run), generated="now")
    assert "<title>tagseg report: seed-2</title>" in page and "<h1>tagseg report: seed-2</h1>" in page
    assert "config <code>tiny_run</code>" in page and "tagseg report: tiny_run" not in page


def test_a_moved_dataset_is_reported_and_data_root_fixes_it(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints", "tb", "*.safetensors"))
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(re.sub(r"root: .*", f"root: {tmp_path / 'moved'}", text, count=1))
    page = render_report(collect_run(run), generated="now")
    assert "Images and ground truth not shown" in page and "VOC root folder not found" in page
    assert 'id="sample-' in page  # the masks are still shown
    fixed = render_report(collect_run(run), data_root=str(tiny_run.parent / "voc"), generated="now")
    assert "not shown" not in fixed and fixed.count("data:image/jpeg") == N_IMAGES


def test_segmentation_run_layout(tmp_path, tiny_run):
    """`tagseg segment eval --save-masks`: masks directly in predictions/<split>/, metrics in RUN/eval.json."""
    run = tmp_path / "seg"
    shutil.copytree(tiny_run / "pseudo" / "train" / "crf" / "masks", run / "predictions" / "train")
    summary = json.loads((tiny_run / "pseudo" / "train" / "crf" / "eval.json").read_text())
    write_json(run / "eval.json", {**summary, "split": "train"})
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    (run / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "step": 10 * e, "lr_last": 1e-3 / e,
                                                           "loss": 1.0 / e, "seconds": 2.0}) + "\n"
                                               for e in (1, 2, 3)))
    contents = collect_run(run)
    assert contents.split == "train"
    assert [(s.key, s.label) for s in contents.sources] == [("predictions/train", "segmentation output")]
    assert contents.sources[0].evaluation.rel_path == "eval.json"
    page = render_report(contents, generated="now")
    titles = re.findall(r'class="chart-title">([^<]+)<', page)
    assert titles == ["loss", "learning rate (end of epoch)", "seconds per epoch"]  # no chart of the step counter
    assert "worst first by the per-image mIoU of the segmentation outputs (eval.json)" in page
    assert "segmentation output (train)" in page and "J&amp;F" in page
    assert page.count("data:image/jpeg") == N_IMAGES


def test_broken_metrics_files_are_skipped_with_a_note(tmp_path):
    run = tmp_path / "run"
    (run / "pseudo" / "a").mkdir(parents=True)
    (run / "pseudo" / "a" / "eval.json").write_text("{not json")
    write_json(run / "pseudo" / "b" / "eval.json", {"miou": 0.5})
    write_json(run / "pseudo" / "c" / "eval.json", {"class_names": ["bg", "x"], "iou": ["high", 0.1]})
    write_json(run / "pseudo" / "d" / "eval.json", {"class_names": ["bg", "x"], "iou": [0.5, None], "miou": "?",
                                                     "confusion": [[1, 2], [3]]})
    page = render_report(collect_run(run), generated="now")
    assert "pseudo/a/eval.json is not valid JSON" in page
    assert "pseudo/b/eval.json is not a tagseg metrics file" in page
    assert "pseudo/c/eval.json: iou must be a list of numbers" in page
    assert "pseudo/d/eval.json: the confusion matrix is not a numeric table" in page
    rows = table_rows(page, "iou-table")
    assert [r[2][0] for r in rows] == ["0.5", ""]  # the readable file is still shown
    assert table_rows(page, "iou-table", "tfoot")[0][1][1] == "–"


def test_all_text_is_escaped(tmp_path):
    run = tmp_path / "run"
    names = ["background", "<script>alert(1)</script>", 'a"b&c']
    matrix = [[5, 1, 0, 0], [2, 3, 0, 0], [0, 0, 4, 0]]
    summary = {"class_names": names, "iou": [5 / 8, 3 / 6, 1.0], "miou": 0.7, "pixel_accuracy": 12 / 15,
               "miou_convention": "<i>c</i>", "confusion": matrix, "images": 1, "dataset": "<d>",
               "per_image": [{"id": "x<y", "miou": 0.7}]}
    write_json(run / "pseudo" / "s<1>" / "eval.json", summary)
    (run / "pseudo" / "s<1>" / "masks").mkdir(parents=True)
    (run / "config.yaml").write_text("name: '<b>bold</b>'\ndata:\n  dataset: voc\n")
    (run / "history.jsonl").write_text('{"epoch": 1, "phase": "<p>", "total": 1.0, "<k>": 2.0}\n'
                                       '{"epoch": 2, "phase": "x", "total": 0.5, "<k>": 1.0}\nnot json\n')
    page = render_report(collect_run(run), generated="<now>")
    for raw in ("<script>alert", "<b>bold", "<i>c</i>", "<d>", "s<1>", "<p>", "<k>", "x<y", "<now>"):
        assert raw not in page, raw
    for escaped in ("&lt;script&gt;alert(1)&lt;/script&gt;", "a&quot;b&amp;c", "&lt;b&gt;bold&lt;/b&gt;",
                    "&lt;k&gt;", "s&lt;1&gt;"):
        assert escaped in page, escaped
    assert "history.jsonl line 3 is not JSON" in page
    assert page.count("<script>") == 1  # only the page's own sorting script


# --------------------------------------------------------------------------- figures


def test_nice_ticks_cover_the_range_with_round_steps():
    for lo, hi in [(0.0, 1.0), (0.23, 0.91), (3.45, 3.49), (1e-4, 1e-3), (-2.0, 7.0), (5.0, 5.0)]:
        ticks = nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 8
        steps = np.diff(ticks)
        assert np.allclose(steps, steps[0])
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    assert nice_ticks(0, 1) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [format_number(v) for v in (0.00075, 0.001, 12.5, 0.0)] == ["7.5e-4", "0.001", "12.5", "0"]


def test_sequential_color_ends_and_monotone_lightness():
    assert sequential_color(0) == "#f7fbff" and sequential_color(1) == "#08306b" and sequential_color(2) == "#08306b"
    lum = [sum(int(sequential_color(v)[i: i + 2], 16) for i in (1, 3, 5)) for v in np.linspace(0, 1, 21)]
    assert all(a > b for a, b in zip(lum, lum[1:]))


def test_heatmap_cells_tooltips_and_shape_check():
    m = np.array([[90, 10, 0], [0, 0, 0]])
    svg = heatmap_svg(m, ["bg", "cat"], ["bg", "cat", "none"], svg_id="h", title="t")
    assert svg.count("<rect x=") - svg.count('fill="none"') - 40 == 6  # 6 cells (+ colour bar steps)
    assert "ground truth bg → predicted cat: 10 px (10.0% of the bg pixels)" in svg
    assert "cat: no ground-truth pixels" in svg
    assert re.findall(r'class="cell">(\d+)<', svg) == ["90", "10"]
    with pytest.raises(TagsegError, match="does not match"):
        heatmap_svg(m, ["bg"], ["bg", "cat", "none"])


def test_line_chart_breaks_at_missing_values_and_marks_phases():
    svg = line_chart_svg([1, 2, 3, 4, 5], {"loss": [1.0, 0.8, None, 0.5, 0.4]}, title="loss",
                         markers=[(2, "finetune")])
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 4
    assert "finetune" in svg and "loss, epoch 4: 0.5" in svg
    with pytest.raises(TagsegError, match="has 2 values for 5"):
        line_chart_svg([1, 2, 3, 4, 5], {"loss": [1.0, 2.0]}, title="bad")


def test_mask_thumbnail_and_data_uri_keep_indices():
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[:10, :10], mask[20:, 30:] = 15, 255
    thumb = mask_thumbnail(mask, 200)
    assert thumb.shape == (150, 200) and set(np.unique(thumb)) == {0, 15, 255}
    assert (thumb[:50, :50] == 15).all() and (thumb[100:, 150:] == 255).all()
    from tagseg.data.classes import voc_palette

    im = Image.open(io.BytesIO(base64.b64decode(mask_data_uri(thumb, voc_palette()).split(",", 1)[1])))
    assert np.array_equal(np.asarray(im), thumb)
    assert im.getpalette()[15 * 3: 15 * 3 + 3] == [192, 128, 128]  # VOC 'person'
    assert fit_size(500, 375, 200) == (200, 150)
    with pytest.raises(TagsegError):
        fit_size(0, 10, 200)


def test_image_miou_matches_a_hand_example():
    gt = np.array([[0, 0, 1], [1, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
    assert image_miou(pred, gt, 4) == pytest.approx((0.5 + 0.5 + 0.0) / 3)  # see test_miou
    assert image_miou(pred, np.full_like(gt, 255), 4) is None


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0"]

PROBE = """<script>
var th = document.querySelector("#iou-table thead th:nth-child(4)");
th.click(); th.click();
var first = document.querySelector("#iou-table tbody tr td:nth-child(2)");
document.body.setAttribute("data-probe-first", first.getAttribute("data-value"));
document.body.setAttribute("data-probe-sort", th.getAttribute("aria-sort"));
</script></body>"""


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=3600)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_page_in_headless_chromium(tiny_run, tmp_path):
    page = write_report(tiny_run, out=tmp_path / "report.html")
    shot = tmp_path / "report.png"
    res = run_chromium([f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()], tmp_path / "profile1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape == (2000, 1280, 3) and im.std() > 10  # a rendered page, not a blank one

    res = run_chromium(["--dump-dom", page.as_uri()], tmp_path / "profile2")
    assert res.returncode == 0 and console_messages(res.stderr) == []
    ids = parse(res.stdout).by_id()
    for ident in SECTION_IDS:
        assert ident in ids, ident
    assert 'class="js"' in res.stdout  # the script ran without error
    assert len(re.findall(r'<tr id="sample-', res.stdout)) == N_IMAGES

    # clicking a column header twice sorts the IoU table descending: the best pseudo-mask class comes first
    pseudo = json.loads((tiny_run / "pseudo" / "train" / "eval.json").read_text())
    best = pseudo["class_names"][int(np.nanargmax([np.nan if v is None else v for v in pseudo["iou"]]))]
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    res = run_chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile3")
    assert console_messages(res.stderr) == []
    assert f'data-probe-first="{best}"' in res.stdout and 'data-probe-sort="descending"' in res.stdout
