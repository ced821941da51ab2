"""Files and folders are untrusted: ids never escape their folder, one process owns a run folder,
pool workers die with their parent, images decode correctly or fail clearly, writers fail cleanly."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from fixtures import make_folder, make_voc, write_mask
from tagseg.cli import main
from tagseg.config import PseudoConfig
from tagseg.data.classes import voc_palette
from tagseg.data.folder import read_folder
from tagseg.data.records import DatasetIndex, ImageRecord, read_id_list
from tagseg.data.voc import read_voc
from tagseg.errors import DataError, OutputError, TagsegError
from tagseg.utils.io import (atomic_path, read_image, read_mask, save_mask_png, set_max_image_pixels,
                             write_json, DEFAULT_MAX_IMAGE_PIXELS)
from tagseg.utils.runlock import RunLockedError, lock_name, run_lock
from tagseg.utils.safe_paths import check_id, path_inside

REPO = Path(__file__).resolve().parents[1]
BAD_IDS = ["../escape", "..\\escape", "a/b", "/etc/passwd", "C:evil", "c:\\x", "..", "a\x00b", "x..y"]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- ids and output paths

@pytest.mark.parametrize("bad", BAD_IDS)
def test_check_id_refuses_names_that_leave_their_folder(bad):
    with pytest.raises(DataError, match=r"list\.txt:7: id .* (separator|'\.\.'|drive|NUL|absolute)"):
        check_id(bad, "list.txt", 7)


def test_check_id_accepts_plain_names():
    for ok in ["2007_000032", "img0", "photo.jpg", "a b", "été", ".hidden"]:
        assert check_id(ok, "x") == ok


def test_path_inside_refuses_escapes_and_symlinks_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    assert path_inside(out, "masks", "a.png") == out / "masks" / "a.png"
    for parts in [("..", "x.png"), ("masks", "..", "..", "x.png"), (str(tmp_path / "x.png"),)]:
        with pytest.raises(DataError, match="outside the output folder"):
            path_inside(out, *parts)
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(DataError, match="outside the output folder"):
        path_inside(out, "link", "x.png")


@pytest.mark.parametrize("bad", ["../../sentinel", "..\\x", "/abs", "a\x00b", "D:x"])
def test_imagesets_ids_are_refused_with_file_and_line(tmp_path, bad):
    make_voc(tmp_path / "voc", n=2)
    lst = tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text(f"2008_000000\n{bad}\n")
    with pytest.raises(DataError, match=r"train\.txt:2: id "):
        read_voc(tmp_path / "voc", "train")


def test_id_lists_accept_bom_and_crlf_and_refuse_duplicates(tmp_path):
    lst = tmp_path / "ids.txt"
    lst.write_bytes(b"\xef\xbb\xbfa 1\r\nb\r\n\r\nc -1\r\n")
    assert read_id_list(lst) == ["a", "b", "c"]
    lst.write_bytes(b"a\r\nb\r\na\r\n")
    with pytest.raises(DataError, match=r"ids\.txt:3: id 'a' listed twice \(first on line 1\)"):
        read_id_list(lst)
    lst.write_bytes(b"a\n\xff\xfe\n")
    with pytest.raises(DataError, match="ids.txt is not UTF-8"):
        read_id_list(lst)


def test_labels_file_with_bom_crlf_duplicates_unknown_and_traversal(tmp_path):
    ids = make_folder(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_bytes(b"\xef\xbb\xbfimage,labels\r\nimg0.png,apple\r\nimg1.png,apple;pear\r\nimg2.png,\r\n")
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfbackground\r\napple\r\npear\r\n")
    idx = read_folder(tmp_path)
    assert idx.class_names == ("background", "apple", "pear")
    assert [r.id for r in idx.records] == ids
    assert idx.records[1].labels.tolist() == [1.0, 1.0, 1.0] and idx.records[2].labels.tolist() == [1.0, 0.0, 0.0]
    csv.write_bytes(b"image,labels\r\nimg0.png,apple\r\nimg1.png,pear\r\nimg0.png,pear\r\n")
    with pytest.raises(DataError, match=r"labels\.csv:4: image img0\.png listed twice \(id 'img0' first on line 2\)"):
        read_folder(tmp_path)
    csv.write_bytes(b"image,labels\r\nimg0.png,apple\r\nimg1.png,plum\r\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: unknown class 'plum'"):
        read_folder(tmp_path)
    for bad in ["../img0.png", "sub/img0.png", "..\\img0.png", "/tmp/img0.png", "C:img0.png"]:
        csv.write_text(f"image,labels\nimg1.png,apple\n{bad},apple\n")
        with pytest.raises(DataError, match=r"labels\.csv:3: id "):
            read_folder(tmp_path)
    csv.write_bytes(b"image,labels\nimg0.png,apple\nimg1\x00.png,apple\n")
    with pytest.raises(DataError, match=r"labels\.csv:3"):
        read_folder(tmp_path)


def test_traversal_id_leaves_everything_outside_the_output_folder_untouched(tmp_path):
    """Even a record that bypassed the readers cannot make the pseudo-mask writer leave ``out``."""
    from tagseg.pseudo.generate import generate_pseudo_masks
    from tagseg.runner import RunOptions

    make_folder(tmp_path / "data", n=1)
    sentinel = tmp_path / "sentinel.png"
    sentinel.write_bytes(b"keep me")
    out = tmp_path / "deep" / "out"
    before = tree(tmp_path)
    image = tmp_path / "data" / "images" / "img0.png"
    labels = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    for bad in ["../../sentinel", "../../../escape", str(tmp_path / "sentinel")]:
        index = DatasetIndex(("background", "apple", "pear"), [ImageRecord(bad, image, labels)])
        with pytest.raises(DataError, match="outside the output folder"):
            generate_pseudo_masks(None, index, out, PseudoConfig(), RunOptions(progress=False))
    assert tree(tmp_path) == before
    for bad in ["../sentinel.png", str(sentinel)]:
        with pytest.raises(DataError, match="outside the output folder"):
            save_mask_png(out / bad, np.zeros((2, 2), np.uint8), voc_palette(), root=out)
        with pytest.raises(DataError, match="outside the output folder"):
            write_json(out / bad, {}, root=out)
    assert tree(tmp_path) == before


@pytest.mark.slow
def test_cli_pseudo_with_a_traversal_id_fails_cleanly_and_writes_nothing_outside(tmp_path, capsys):
    make_voc(tmp_path / "voc", n=2)
    run = tmp_path / "run"
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), f"data.root={tmp_path / 'voc'}",
                 "data.train_split=train", "data.pseudo_split=train", "data.image_size=64", "data.num_workers=0",
                 "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
                 "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=2",
                 "pseudo.image_size=64"]) == 0
    images = tmp_path / "voc" / "JPEGImages"
    (tmp_path / "sentinel.jpg").write_bytes((images / "2008_000000.jpg").read_bytes())
    (tmp_path / "sentinel.png").write_bytes(b"keep me")
    (tmp_path / "voc" / "ImageSets" / "Segmentation" / "train.txt").write_text("2008_000000\n../../sentinel\n")
    before = {k: v for k, v in tree(tmp_path).items() if not k.startswith("run/")}
    capsys.readouterr()
    assert main(["pseudo", "--run", str(run), "--out", str(tmp_path / "voc" / "out")]) == 2
    err = capsys.readouterr().err
    assert "train.txt:2: id '../../sentinel' contains a path separator" in err and "Traceback" not in err
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith("run/")}
    assert after == before


def test_predict_refuses_unsafe_names_and_writes_nothing_outside(tmp_path, monkeypatch):
    import tagseg.segment.predict as predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    rgb = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(inputs / "..\\..\\evil.png")
    Image.fromarray(rgb).save(inputs / "good.png")
    monkeypatch.setattr(predict, "predict_mask", lambda model, image, *a: np.zeros(image.shape[:2], np.uint8))
    files, _ = predict.collect_images([inputs])
    out = tmp_path / "out"
    report = predict.predict_images(None, files, out, None, voc_palette(), progress=False)
    assert [p.name for p in report.written] == ["good.png"]
    assert len(report.failures) == 1 and "evil" in report.failures[0][0]
    assert "path separator" in report.failures[0][1]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "in/..\\..\\evil.png", "in/good.png", "out/masks/good.png", "out/overlays/good.png"]


def test_report_refuses_traversal_sample_names(tmp_path):
    from tagseg.report.collect import collect_run, read_eval

    masks = tmp_path / "pseudo" / "train" / "masks"
    masks.mkdir(parents=True)
    write_mask(masks / "a.png", np.zeros((4, 4), np.uint8))
    ev = tmp_path / "pseudo" / "train" / "eval.json"
    ev.write_text(json.dumps({"class_names": ["bg"], "iou": [1.0],
                              "per_image": [{"id": "a", "miou": 1.0}, {"id": "../../../etc/passwd", "miou": 0.0}]}))
    with pytest.raises(TagsegError, match=r"eval\.json per_image\[1\]: id '\.\./\.\./\.\./etc/passwd'"):
        read_eval(tmp_path, ev)
    run = collect_run(tmp_path)
    assert not run.evaluations and any("per_image[1]" in n for n in run.notes)


# ---------------------------------------------------------------- one process per run folder

HOLD = textwrap.dedent("""
    import os, sys, time
    from tagseg.utils.runlock import run_lock
    shard = tuple(int(v) for v in sys.argv[2].split("/")) if sys.argv[2] else None
    with run_lock(sys.argv[1], shard=shard):
        if sys.argv[3] == "fork" and os.fork() == 0:  # a forked child (like a data-loader worker)
            time.sleep(120)
            os._exit(0)
        print("locked", flush=True)
        time.sleep(120)
""")


@contextlib.contextmanager
def holder(folder: Path, shard: str = "", fork: bool = False):
    """A separate process holding the lock of ``folder``; yields its Popen (killed at the end,
    with the child it forked when ``fork``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), shard, "fork" if fork else ""],
                            stdout=subprocess.PIPE, text=True, env=env)
    children: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "locked"
        children = _children(proc.pid)
        yield proc
    finally:
        for pid in [proc.pid, *children]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_second_process_on_a_run_folder_stops_at_once_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    with holder(run) as proc:
        assert (run / ".lock").read_text().strip() == str(proc.pid)
        with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
            with run_lock(run):
                pass
        assert main(["train", "--config", "demo", "--out", str(run), f"data.root={tmp_path / 'data'}"]) == 2
        assert main(["segment", "train", "--config", "segment_demo", "--out", str(run)]) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.count(f"in use by another tagseg process (pid {proc.pid}") == 2
        # refused before any work (not timed: a loaded machine is slower, not wrong): no data, no epoch
        assert not (tmp_path / "data").exists() and "epoch" not in captured.out
        proc.send_signal(signal.SIGKILL)  # kill -9: the OS drops the lock with the process
        proc.wait()
    with run_lock(run) as path:
        pid_seen = subprocess.run(["cat", str(path)], capture_output=True, text=True).stdout  # not opened here
    assert pid_seen.strip() == str(os.getpid())
    assert path.read_text() == ""  # released: no stale pid left for the next reader


@pytest.mark.skipif(not hasattr(os, "fork") or not Path("/proc/self/stat").exists(), reason="needs fork and /proc")
def test_a_forked_child_of_a_killed_holder_does_not_keep_the_lock(tmp_path):
    """Data-loader workers forked by a killed `train` may live a few seconds more: `--resume` must not wait."""
    run = tmp_path / "run"
    with holder(run, fork=True) as proc:
        children = _children(proc.pid)
        assert len(children) == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _alive(children[0])  # the forked child is still running...
        with run_lock(run):  # ...and the lock is free
            pass


def test_pseudo_shards_lock_separately(tmp_path):
    out = tmp_path / "pseudo"
    assert lock_name((0, 1)) == ".lock" and lock_name((1, 4)) == ".lock.shard-1-of-4"
    with holder(out, "0/2") as proc:
        with run_lock(out, shard=(1, 2)):  # the other shard runs side by side
            with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
                with run_lock(out, shard=(0, 2)):
                    pass


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (nobody reaped it yet)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find worker processes")
def test_kill_9_of_pseudo_leaves_no_workers_and_resume_gives_the_same_masks(tmp_path, capsys):
    run, data = tmp_path / "run", tmp_path / "data"
    tiny = [f"data.root={data}", "data.synthetic_train=16", "data.synthetic_val=64", "data.synthetic_size=64",
            "data.image_size=64", "data.num_workers=0", "train.epochs=1", "train.batch_size=16",
            "method.et_crop_size=32", "pseudo.image_size=64"]
    assert main(["train", "--config", "demo", "--out", str(run), *tiny]) == 0
    out = run / "pseudo" / "val"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tagseg", "pseudo", "--run", str(run), "--split", "val",
                             "--workers", "2"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    while proc.poll() is None:  # no deadline: a loaded machine only takes longer to write the first mask
        workers = sorted(set(workers) | set(_children(proc.pid)))
        if (out / "masks").is_dir() and any((out / "masks").glob("*.png")):
            break
        time.sleep(0.02)
    workers = sorted(set(workers) | set(_children(proc.pid)))
    assert proc.poll() is None, "pseudo finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(workers) >= 2
    t0 = time.time()
    while any(_alive(w) for w in workers) and time.time() - t0 < 120:  # a bound for the failure case only
        time.sleep(0.05)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:  # do not leave them behind when the check fails
        with contextlib.suppress(OSError):
            os.kill(w, signal.SIGKILL)
    assert not survivors, f"workers outlived their parent by 120 s: {survivors}"
    done = len(list((out / "masks").glob("[!.]*.png")))
    assert 0 < done < 64
    capsys.readouterr()
    assert main(["pseudo", "--run", str(run), "--split", "val", "--workers", "2"]) == 0
    assert "already done" in capsys.readouterr().out
    assert not [p.name for p in (out / "masks").iterdir() if p.name.startswith(".")]  # the killed run's temp files
    assert main(["pseudo", "--run", str(run), "--split", "val", "--out", str(tmp_path / "one")]) == 0
    for sub in ("masks",):
        names = sorted(p.name for p in (out / sub).glob("[!.]*.png"))
        assert len(names) == 64
        for name in names:
            assert (read_mask(out / sub / name, 21) == read_mask(tmp_path / "one" / sub / name, 21)).all(), name


def test_stale_temporary_files_of_this_shard_are_removed(tmp_path):
    from tagseg.utils.io import remove_stale_temp_files

    masks = tmp_path / "masks"
    masks.mkdir()
    mine = [tempfile.mkstemp(prefix=".a.png.", suffix=".tmp.png", dir=masks),
            tempfile.mkstemp(prefix=".b.png.", suffix=".tmp.png", dir=masks)]
    other = tempfile.mkstemp(prefix=".c.png.", suffix=".tmp.png", dir=masks)  # another shard's image
    for fd, _ in [*mine, other]:
        os.close(fd)
    (masks / "a.png").write_bytes(b"done")
    (masks / ".a.png.notes").write_bytes(b"not ours")
    assert remove_stale_temp_files([masks / "a.png", masks / "b.png"]) == 2
    assert sorted(p.name for p in masks.iterdir()) == sorted([".a.png.notes", "a.png", Path(other[1]).name])


# ---------------------------------------------------------------- images

def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 65280]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (2, 3, 3) and (img == img[..., :1]).all()
    assert img[..., 0].tolist() == [[0, 1, 128], [255, 4, 254]]  # round(v * 255 / 65535)
    # 16-bit RGB (48-bit PNG, written by hand: PIL cannot): PIL keeps the high byte, within 1 of rounding
    px = np.array([[[0, 65535, 32896], [257, 1000, 65280]], [[12850, 0, 51400], [65535, 65535, 65535]]], ">u2")
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(2))
    (tmp_path / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
                                         + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))
    want = (px.astype(np.int64) * 255 + 32767) // 65535
    assert np.abs(read_image(tmp_path / "rgb16.png").astype(np.int64) - want).max() <= 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_colour_modes_convert_to_rgb(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (200, 30, 60)
    rgb[:, 4:] = (10, 220, 90)
    base = Image.fromarray(rgb)
    cases = {
        "cmyk.jpg": base.convert("CMYK"), "rgba.png": base.convert("RGBA"), "p.png": base.quantize(colors=2),
        "l.png": base.convert("L"), "l.jpg": base.convert("L"), "la.png": base.convert("LA"),
        "cmyk.tif": base.convert("CMYK"), "one.png": base.convert("1"),
    }
    for name, im in cases.items():
        im.save(tmp_path / name, **({"quality": 100, "subsampling": 0} if name.endswith(".jpg") else {}))
        out = read_image(tmp_path / name)
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8, name
        want = np.asarray(im.convert("RGB")) if im.mode in ("L", "LA", "1") else rgb
        tol = 8 if name.endswith(".jpg") else 0
        assert np.abs(out.astype(int) - want.astype(int)).max() <= tol, name
    gray = read_image(tmp_path / "l.png")
    assert (gray == gray[..., :1]).all() and gray[0, 0, 0] == round(0.299 * 200 + 0.587 * 30 + 0.114 * 60)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (120, 40, 200)
    rgba[..., 3] = 0  # fully transparent: the stored colour is kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png")[0, 0].tolist() == [120, 40, 200]


def _exif_rotated_jpeg(path: Path, stored: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(path, exif=exif, quality=100, subsampling=0)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white band on the stored image's left
    _exif_rotated_jpeg(tmp_path / "r.jpg", stored, 6)  # 6: display rotated 90° clockwise
    img = read_image(tmp_path / "r.jpg")
    assert img.shape == (40, 20, 3)
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r.jpg")).convert("RGB"))
    assert np.abs(img.astype(int) - want.astype(int)).max() == 0
    assert img[:10].mean() > 200 and img[15:].mean() < 50  # the band is now on top
    for orientation in range(1, 9):  # every orientation equals Pillow's reference transpose
        path = tmp_path / f"o{orientation}.png"
        im = Image.fromarray(np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8))
        exif = im.getexif()
        exif[0x0112] = orientation
        im.save(path, exif=exif)
        want = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
        assert np.array_equal(read_image(path), want), orientation


def test_predict_writes_masks_in_the_displayed_orientation(tmp_path, monkeypatch):
    import tagseg.segment.predict as predict

    stored = np.zeros((20, 40, 3), np.uint8)
    _exif_rotated_jpeg(tmp_path / "r.jpg", stored, 8)
    seen = []

    def fake_predict(model, image, *a):
        seen.append(image.shape)
        return np.ones(image.shape[:2], np.uint8)

    monkeypatch.setattr(predict, "predict_mask", fake_predict)
    report = predict.predict_images(None, [tmp_path / "r.jpg"], tmp_path / "out", None, voc_palette(), progress=False)
    assert seen == [(40, 20, 3)] and not report.failures
    assert Image.open(tmp_path / "out" / "masks" / "r.png").size == (20, 40)
    assert Image.open(tmp_path / "out" / "overlays" / "r.png").size == (20, 40)


def test_dataset_image_whose_size_disagrees_with_its_mask_names_both_files(tmp_path):
    from tagseg.segment.config import SegAugmentConfig
    from tagseg.segment.data import SegmentationTrainSet

    make_folder(tmp_path, n=2)
    stored = np.zeros((32, 48, 3), np.uint8)
    _exif_rotated_jpeg(tmp_path / "images" / "img0.jpg", stored, 6)  # displayed 32 wide, 48 high
    (tmp_path / "images" / "img0.png").unlink()
    write_mask(tmp_path / "masks" / "img0.png", np.zeros((32, 48), np.uint8))  # drawn on the stored pixels
    (tmp_path / "labels.csv").write_text("image,labels\nimg0.jpg,apple\nimg1.png,apple\n")
    idx = read_folder(tmp_path)
    ds = SegmentationTrainSet(idx, [r.mask_path for r in idx.records], SegAugmentConfig())
    with pytest.raises(DataError, match=r"mask .*img0\.png is 48×32 px but image .*img0\.jpg is 32×48 px"):
        ds.load_pair(0)


def _big_png(path: Path, width: int, height: int) -> None:
    """A valid all-black grayscale PNG written row by row (never held in memory)."""
    chunk = _png_chunk
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [comp.compress(row) for _ in range(height)]
    data = b"".join(parts) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_decompression_bomb_limit_and_its_config_key(tmp_path):
    _big_png(tmp_path / "bomb.png", 20000, 20000)
    assert (tmp_path / "bomb.png").stat().st_size < 2_000_000
    decoded = []
    real_load = ImageFile.ImageFile.load
    ImageFile.ImageFile.load = lambda self: decoded.append(1) or real_load(self)  # records any decoding
    try:
        with pytest.raises(DataError, match=r"bomb\.png has 400000000 pixels, more than the limit of 89478485 .*data\.max_image_pixels"):
            read_image(tmp_path / "bomb.png")
        with pytest.raises(DataError, match="bomb.png"):
            read_mask(tmp_path / "bomb.png", 21)
    finally:
        ImageFile.ImageFile.load = real_load
    assert not decoded  # refused from the header, never decoded (checked, not timed)
    Image.fromarray(np.full((300, 300), 7, np.uint8)).save(tmp_path / "mid.png")
    try:
        set_max_image_pixels(50_000)
        with pytest.raises(DataError, match=r"mid.png has 90000 pixels \(300×300\), more than the limit of 50000"):
            read_image(tmp_path / "mid.png")
        set_max_image_pixels(100_000)
        assert read_image(tmp_path / "mid.png")[0, 0].tolist() == [7, 7, 7]
    finally:
        set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)


def test_max_image_pixels_is_honoured_from_the_config(tmp_path):
    from tagseg.config import DataConfig
    from tagseg.data.build import build_index

    make_folder(tmp_path, n=1)  # 32×32 images
    try:
        idx = build_index(DataConfig(dataset="folder", root=str(tmp_path), max_image_pixels=1000), "all")
        with pytest.raises(DataError, match="more than the limit of 1000"):
            read_image(idx.records[0].image_path)
    finally:
        set_max_image_pixels(DEFAULT_MAX_IMAGE_PIXELS)


def test_truncated_and_empty_files_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: the file is empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"empty\.png: the file is empty"):
        read_mask(tmp_path / "empty.png", 21)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.png")
    data = (tmp_path / "f.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        read_image(tmp_path / "cut.png")
    write_mask(tmp_path / "m.png", np.zeros((64, 64), np.uint8))
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "mcut.png").write_bytes(data[:60])
    with pytest.raises(DataError, match=r"mcut\.png"):
        read_mask(tmp_path / "mcut.png", 21)


# ---------------------------------------------------------------- read-only folder and full disk

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs mounted on tmp_path/fs (needs root; skipped otherwise)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_folder_gives_a_clear_error_and_keeps_earlier_outputs(small_tmpfs):
    out = small_tmpfs / "out"
    save_mask_png(out / "masks" / "a.png", np.ones((8, 8), np.uint8), voc_palette(), root=out)
    write_json(out / "eval.json", {"v": 1}, root=out)
    before = tree(small_tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(OutputError, match=r"cannot write .*a\.png: Read-only file system"):
        save_mask_png(out / "masks" / "a.png", np.zeros((8, 8), np.uint8), voc_palette(), root=out)
    with pytest.raises(OutputError, match=r"cannot write .*new[/\\]b\.png"):
        save_mask_png(out / "new" / "b.png", np.zeros((8, 8), np.uint8), voc_palette(), root=out)
    with pytest.raises(OutputError, match="Read-only"):
        with run_lock(out / "fresh"):
            pass
    assert tree(small_tmpfs) == before


def test_full_disk_gives_a_clear_error_and_leaves_no_partial_file(small_tmpfs):
    out = small_tmpfs / "out"
    write_json(out / "eval.json", {"v": 1}, root=out)
    before = tree(small_tmpfs)
    noise = np.random.default_rng(0).integers(0, 256, (600, 600)).astype(np.uint8)  # incompressible: > 256 KiB
    with pytest.raises(OutputError, match=r"cannot write .*big\.png: No space left on device"):
        save_mask_png(out / "big.png", noise, voc_palette(), root=out)
    with pytest.raises(OutputError, match=r"eval\.json: No space left"):
        with atomic_path(out / "eval.json", root=out) as tmp:
            tmp.write_bytes(b"x" * 400_000)
    assert tree(small_tmpfs) == before  # the old eval.json is intact; no temporary file is left
    assert not [p for p in small_tmpfs.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_cli_pseudo_on_a_full_then_read_only_disk(small_tmpfs, tmp_path, capsys):
    make_voc(tmp_path / "voc", n=6)
    run = tmp_path / "run"
    assert main(["train", "--config", "tkpcl_voc", "--out", str(run), f"data.root={tmp_path / 'voc'}",
                 "data.train_split=train", "data.pseudo_split=train", "data.image_size=64", "data.num_workers=0",
                 "model.encoder=test_resnet", "model.pretrained=false", "model.lstm_hidden=8",
                 "method.et_crop_size=32", "train.epochs=1", "train.warmup_epochs=0", "train.batch_size=2",
                 "pseudo.image_size=64"]) == 0
    out = small_tmpfs / "out"
    filler = small_tmpfs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk, then free room for the lock and ~2 masks
    with contextlib.suppress(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    os.truncate(filler, filler.stat().st_size - 3 * 4096)
    capsys.readouterr()
    for workers in ("1", "2"):
        assert main(["pseudo", "--run", str(run), "--out", str(out), "--workers", workers]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and str(out) in err and "Traceback" not in err
        assert not [p.name for p in small_tmpfs.rglob("*") if ".tmp" in p.name]  # no partial files
    filler.unlink()
    assert main(["pseudo", "--run", str(run), "--out", str(out)]) == 0
    before = tree(out / "masks")
    assert len(before) == 6
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    assert main(["pseudo", "--run", str(run), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and str(out) in err
    assert tree(out / "masks") == before


def test_os_errors_inside_a_writer_become_output_errors(tmp_path, monkeypatch):
    """Without root (no tmpfs), the same clean-up path is driven by an injected EACCES."""
    target = tmp_path / "x.json"
    write_json(target, {"old": True})

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match=r"cannot write .*x\.json: Permission denied"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


# ---------------------------------------------------------------- fuzz

def test_fuzz_random_bytes_only_give_tagseg_errors(tmp_path):
    """Seeded random and mutated bytes as image, mask, labels file and id list: only TagsegError comes out."""
    rng = np.random.default_rng(1234)
    make_folder(tmp_path / "ds", n=2)
    seeds = [(tmp_path / "ds" / "images" / "img0.png").read_bytes(), (tmp_path / "ds" / "masks" / "img1.png").read_bytes()]
    buf = tmp_path / "seed.jpg"
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, quality=90)
    seeds.append(buf.read_bytes())
    csv_seed = (tmp_path / "ds" / "labels.csv").read_bytes()

    def mutate(data: bytes) -> bytes:
        arr = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            return bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
        if kind == 1 and arr:
            for _ in range(int(rng.integers(1, 20))):
                arr[int(rng.integers(len(arr)))] = int(rng.integers(256))
            return bytes(arr)
        if kind == 2:
            return bytes(arr[: int(rng.integers(0, len(arr) + 1))])
        pos = int(rng.integers(0, len(arr) + 1))
        return bytes(arr[:pos]) + bytes(rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8)) + bytes(arr[pos:])

    outcomes = {"ok": 0, "error": 0}
    for i in range(150):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(mutate(seeds[i % len(seeds)]))
        for reader in (read_image, lambda p: read_mask(p, 21)):
            try:
                reader(path)
                outcomes["ok"] += 1
            except TagsegError as exc:
                assert path.name in str(exc)
                outcomes["error"] += 1
    for i in range(150):
        (tmp_path / "ds" / "labels.csv").write_bytes(mutate(csv_seed))
        try:
            read_folder(tmp_path / "ds")
            outcomes["ok"] += 1
        except TagsegError as exc:
            assert "labels.csv" in str(exc) or "images" in str(exc)
            outcomes["error"] += 1
    ids_seed = b"\xef\xbb\xbf2008_000000\r\n2008_000001 1\r\n"
    for i in range(150):
        (tmp_path / "ids.txt").write_bytes(mutate(ids_seed))
        try:
            read_id_list(tmp_path / "ids.txt")
            outcomes["ok"] += 1
        except TagsegError as exc:
            assert "ids.txt" in str(exc)
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 10  # both paths were exercised
