"""Hostile archives: members that declare (or produce) more bytes than allowed are stopped before
they are written, memory stays bounded while a large member streams through, and nothing is left
behind. The bombs are generated (tar, tgz, zip; per-file, per-archive, lying sizes), not fixed files."""

from __future__ import annotations

import gzip
import io
import os
import random
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from prepare_fakes import EXPECTED_VOC, make_coco_archives, make_coco_source, make_voc_archives, make_voc_sources
from tagseg.cli import main
from tagseg.data.prepare.archives import MB, ExtractionLimits, copy_bounded
from tagseg.data.prepare.coco import prepare_coco
from tagseg.data.prepare.verify import ListExpectation
from tagseg.data.prepare.voc import check_mat_expansion, decode_png_mask, prepare_voc
from tagseg.errors import DataError


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced on demand (a bomb's payload is never held whole)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


LAST: dict[str, str] = {}


def error_lines(err: str) -> int:
    """Lines of an error report (progress-bar redraws, which end in a carriage return, left out);
    no traceback allowed."""
    assert "Traceback" not in err
    LAST["err"] = err
    return len([line for line in (raw.split("\r")[-1] for raw in err.split("\n")) if line.strip()])


def voc_expected():
    return {k: ListExpectation(len(v)) for k, v in EXPECTED_VOC.items()}


def add_bomb_member(archive: Path, mode: str, name: str, size: int, declared_only: bool = False) -> None:
    """Append (rebuild) ``archive`` with a member ``name`` of ``size`` zero bytes. ``declared_only``:
    write the header only (the body is never reached: the declaration must stop the reader)."""
    with tarfile.open(archive, "r") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    with tarfile.open(archive, mode) as dst:
        for m, data in members:
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
        info = tarfile.TarInfo(name)
        info.size = size
        if declared_only:
            dst.fileobj.write(info.tobuf(tarfile.GNU_FORMAT))
            dst.offset += tarfile.BLOCKSIZE  # nothing after: a truncated body, as a header-only bomb
            dst.closed = True  # do not pad: the archive ends after the header
            dst.fileobj.close() if mode == "w" else None
        else:
            dst.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))


def nothing_written(out: Path) -> bool:
    files = [p for p in out.rglob("*") if p.is_file() and p.name != ".prepare.lock"]
    return not files and not list(out.glob(".staging.*"))


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_member_over_the_per_file_limit_is_refused_before_writing(tmp_path, mode):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    bomb = tmp_path / ("bomb.tar" if mode == "w" else "bomb.tgz")
    os.replace(voc_tar, bomb)
    add_bomb_member(bomb, mode, "VOCdevkit/VOC2012/JPEGImages/2009_000001.jpg", 3 * MB)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"2009_000001\.jpg declares 3\.0 MB, more than the limit of 1\.0 MB .*"
                                        r"--max-file-mb"):
        prepare_voc(bomb, sbd_tgz, out, workers=1, expected=voc_expected(), limits=ExtractionLimits(max_file=MB))
    assert not (out / "JPEGImages" / "2009_000001.jpg").exists()
    assert not list(out.glob(".staging.*"))


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_a_2_gib_declaration_is_refused_at_its_header_with_default_limits(tmp_path, mode, capsys):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    _, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    info = tarfile.TarInfo("VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg")
    info.size = 2 * 1024 ** 3
    header = info.tobuf(tarfile.GNU_FORMAT)  # the header alone: the body is never reached
    bomb = tmp_path / "bomb.tar"
    bomb.write_bytes(header if mode == "w" else gzip.compress(header))
    assert bomb.stat().st_size < 10_000
    out = tmp_path / "out"
    code = main(["prepare", "voc", "--voc", str(bomb), "--sbd", str(sbd_tgz), "--out", str(out), "--workers", "1"])
    assert code == 2 and error_lines(capsys.readouterr().err) == 1
    assert "declares 2.00 GB" in LAST["err"]
    assert nothing_written(out)


def test_running_total_over_the_archive_limit_is_refused(tmp_path):
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    for i in range(6):
        add_bomb_member(voc_tar, "w", f"VOCdevkit/VOC2012/JPEGImages/2009_00000{i}.jpg", MB // 2)
    limits = ExtractionLimits(max_file=MB, max_archive=2 * MB)
    with pytest.raises(DataError, match=r"add up to more than the limit of 2\.0 MB .*--max-archive-gb"):
        prepare_voc(voc_tar, sbd_tgz, tmp_path / "out", workers=1, expected=voc_expected(), limits=limits)
    assert not list((tmp_path / "out").glob(".staging.*"))


def test_copy_bounded_stops_a_member_that_produces_more_than_it_declared():
    dst = io.BytesIO()
    with pytest.raises(DataError, match="yields more than the 1,000 bytes it declares"):
        copy_bounded(io.BytesIO(bytes(5000)), dst, 1000, "m")
    assert len(dst.getvalue()) <= 1000
    dst = io.BytesIO()
    assert copy_bounded(io.BytesIO(b"x" * 1000), dst, 1000, "m") == 1000


def _add_lying_member(path: Path, keep: dict[str, bytes], name: str, real: int, declared: int) -> None:
    """Rewrite the zip ``path`` with ``keep`` and a member ``name`` whose headers declare
    ``declared`` bytes but whose data inflates to ``real``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in keep.items():
            zf.writestr(n, d)
        zf.writestr(name, bytes(real))
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(name).header_offset
    raw = bytearray(path.read_bytes())
    raw[offset + 22:offset + 26] = struct.pack("<I", declared)  # local header: uncompressed size
    at = raw.find(b"PK\x01\x02")
    while at >= 0:  # central directory entries
        length = struct.unpack("<H", raw[at + 28:at + 30])[0]
        if raw[at + 46:at + 46 + length] == name.encode():
            raw[at + 24:at + 28] = struct.pack("<I", declared)
        at = raw.find(b"PK\x01\x02", at + 1)
    path.write_bytes(bytes(raw))


def _coco_zips(tmp_path: Path) -> Path:
    src, _ = make_coco_source(tmp_path / "coco_src")
    return make_coco_archives(src, tmp_path / "downloads")


def test_coco_zip_image_over_the_limit_is_refused_before_writing(tmp_path):
    downloads = _coco_zips(tmp_path)
    with zipfile.ZipFile(downloads / "val2014.zip", "a") as zf:
        zf.writestr("val2014/COCO_val2014_000000000200.jpg.big", b"")  # noise
    name = "val2014/COCO_val2014_000000000202.jpg"
    data = {n: z for n, z in []}
    with zipfile.ZipFile(downloads / "val2014.zip") as zf:
        data = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != name}
    with zipfile.ZipFile(downloads / "val2014.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in data.items():
            zf.writestr(n, d)
        with zf.open(name, "w") as fh:
            for _ in range(3):
                fh.write(bytes(MB))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"000000000202\.jpg declares 3\.0 MB, more than the limit of 1\.0 MB"):
        prepare_coco(downloads, out, workers=1, verify=False, limits=ExtractionLimits(max_file=MB))
    assert not (out / "JPEGImages" / "COCO_val2014_000000000202.jpg").exists()


def test_coco_zip_member_that_lies_about_its_size_is_stopped(tmp_path):
    downloads = _coco_zips(tmp_path)
    name = "val2014/COCO_val2014_000000000202.jpg"
    with zipfile.ZipFile(downloads / "val2014.zip") as zf:
        keep = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != name}
    _add_lying_member(downloads / "val2014.zip", keep, name, real=4 * MB, declared=1500)
    with zipfile.ZipFile(downloads / "val2014.zip") as zf:
        assert zf.getinfo(name).file_size == 1500
    out = tmp_path / "out"
    with pytest.raises(DataError, match="cannot read archive .*val2014.zip|yields more than"):
        prepare_coco(downloads, out, workers=1, verify=False)
    assert not (out / "JPEGImages" / "COCO_val2014_000000000202.jpg").exists()


def test_annotation_json_over_its_limit_is_refused_before_parsing(tmp_path):
    src, _ = make_coco_source(tmp_path / "coco")
    with pytest.raises(DataError, match=r"instances_train2014\.json declares .* --max-annotation-mb"):
        prepare_coco(src, tmp_path / "out", workers=1, verify=False, limits=ExtractionLimits(max_annotation=100))


def test_zip_annotation_bomb_is_refused_by_its_declared_size(tmp_path):
    downloads = _coco_zips(tmp_path)
    with zipfile.ZipFile(downloads / "annotations_trainval2014.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("annotations/instances_train2014.json", "w") as fh:
            fh.write(b"[")
            for _ in range(40):
                fh.write(b" " * MB)
            fh.write(b"]")
    assert (downloads / "annotations_trainval2014.zip").stat().st_size < 200_000
    with pytest.raises(DataError, match="declares 40.0 MB"):
        prepare_coco(downloads, tmp_path / "out", workers=1, verify=False,
                     limits=ExtractionLimits(max_annotation=8 * MB))


def _mat_bomb(expanded: int) -> bytes:
    """A MATLAB v5 file whose one compressed element inflates to ``expanded`` zero bytes."""
    header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(bytes(MB)) for _ in range(expanded // MB)) + comp.flush()
    return header + struct.pack("<II", 15, len(body)) + body


def test_sbd_mat_bomb_is_stopped_while_inflating():
    bomb = _mat_bomb(64 * MB)
    assert len(bomb) < 200_000
    with pytest.raises(DataError, match="expands to more than"):
        check_mat_expansion(bomb, "cls/2008_000001.mat", 8 * MB)
    check_mat_expansion(_mat_bomb(2 * MB), "small.mat", 8 * MB)  # under the limit: passes


def test_png_mask_bomb_is_a_one_line_data_error():
    header = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    data = header + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(DataError, match="mask m.png"):
        decode_png_mask(data, "m.png")


@pytest.mark.parametrize("seed", range(6))
def test_generated_archive_damage_fails_cleanly(tmp_path, seed):
    """Random truncations and byte flips of a real tgz: prepare succeeds or fails with a DataError,
    never a traceback, and leaves no staging folder."""
    rng = random.Random(seed)
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    target = voc_tar if seed % 2 else sbd_tgz
    raw = bytearray(target.read_bytes())
    if seed % 3 == 0:
        raw = raw[:rng.randrange(100, len(raw))]
    else:
        for _ in range(rng.randrange(1, 20)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    target.write_bytes(bytes(raw))
    out = tmp_path / "out"
    try:
        prepare_voc(voc_tar, sbd_tgz, out, workers=1, expected=voc_expected())
    except DataError as exc:
        assert "\n" not in str(exc).split(":\n")[0]
    assert not list(out.glob(".staging.*"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak from /proc (Linux)")
def test_peak_memory_stays_far_below_a_large_member_streaming_through(tmp_path):
    """A 384 MB member (allowed by raising the limit) streams through prepare: the process's peak
    resident memory stays under 1 GB and below the member's own size (never read whole)."""
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    bomb = tmp_path / "bomb.tgz"
    with tarfile.open(voc_tar) as src, tarfile.open(bomb, "w:gz", compresslevel=1) as dst:
        for m in src.getmembers():
            if m.name.endswith("JPEGImages/2008_000001.jpg"):
                m = tarfile.TarInfo(m.name)
                m.size = 384 * MB
                dst.addfile(m, io.BufferedReader(Zeros(m.size), 1 << 20))
            else:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    script = textwrap.dedent(f"""
        import re
        from tagseg.cli import main
        code = main(["prepare", "voc", "--voc", {str(bomb)!r}, "--sbd", {str(sbd_tgz)!r}, "--out", {str(tmp_path / 'out')!r},
                     "--workers", "1", "--max-file-mb", "512"])
        # VmHWM: this process's own peak (ru_maxrss would carry over the forking parent's)
        peak = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        print("CODE", code, "PEAK_KB", peak)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    line = [x for x in proc.stdout.splitlines() if x.startswith("CODE")][-1].split()
    code, peak_mb = int(line[1]), int(line[3]) / 1024
    assert code == 2  # the zeros are no JPEG: verification names it
    assert "Traceback" not in proc.stderr
    assert peak_mb < 384, f"peak {peak_mb:.0f} MB: the member was held in memory"
    assert not list((tmp_path / "out").glob(".staging.*"))


@pytest.mark.slow
def test_failed_archive_reads_leave_no_temporary_folders(tmp_path):
    """Failing prepare runs over a worker pool (truncated tar, bomb, damaged zip) leave nothing in the
    temporary folder (multiprocessing's pymp-*, staging) nor staging folders in the output."""
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(voc_tar.read_bytes()[:30_000])
    bomb = tmp_path / "bomb.tar"
    info = tarfile.TarInfo("VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg")
    info.size = 2 * 1024 ** 3
    bomb.write_bytes(info.tobuf(tarfile.GNU_FORMAT))
    downloads = _coco_zips(tmp_path)
    raw = (downloads / "val2014.zip").read_bytes()
    (downloads / "val2014.zip").write_bytes(raw[:len(raw) // 2])
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "OMP_NUM_THREADS": "1", "TMPDIR": str(private_tmp)}
    runs = [["voc", "--voc", str(truncated), "--sbd", str(sbd_tgz)], ["voc", "--voc", str(bomb), "--sbd", str(sbd_tgz)],
            ["voc", "--voc", str(voc_tar), "--sbd", str(truncated)], ["coco", "--coco", str(downloads)]]
    for i, args in enumerate(runs):
        out = tmp_path / f"out{i}"
        proc = subprocess.run([sys.executable, "-m", "tagseg", "prepare", *args, "--out", str(out), "--workers", "2"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert not list(out.glob(".staging.*")), args
    assert sorted(p.name for p in private_tmp.iterdir()) == []


def _hostile_member(rng: random.Random, outside: Path) -> tarfile.TarInfo:
    """A generated member that tries to leave the archive or to plant something."""
    base = "VOCdevkit/VOC2012/JPEGImages/2008_000001.jpg"
    kind = rng.choice(["dotdot", "absolute", "inner_dotdot", "symlink", "hardlink", "fifo", "long", "backslash",
                       "unicode", "dir_link"])
    name = {"dotdot": "../" * rng.randrange(1, 6) + f"{outside.name}/x.jpg",
            "absolute": str(outside / "x.jpg"),
            "inner_dotdot": f"VOCdevkit/VOC2012/JPEGImages/../../../../{outside.name}/2008_000009.jpg",
            "long": "VOCdevkit/VOC2012/JPEGImages/" + "a" * rng.randrange(200, 5000) + ".jpg",
            "backslash": "VOCdevkit\\..\\..\\x.jpg",
            "unicode": "VOCdevkit/VOC2012/JPEGImages/2008_00000\u0661.jpg",
            "dir_link": "VOCdevkit/VOC2012/SegmentationClass"}.get(kind, base)
    info = tarfile.TarInfo(name)
    if kind == "symlink" or kind == "dir_link":
        info.type, info.linkname = tarfile.SYMTYPE, str(outside)
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, str(outside / "keep.txt")
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        info.size = rng.randrange(0, 64)
    return info


@pytest.mark.parametrize("seed", range(8))
def test_generated_hostile_member_names_never_write_outside(tmp_path, seed):
    rng = random.Random(seed)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched\n")
    voc, sbd, _ = make_voc_sources(tmp_path / "src")
    voc_tar, sbd_tgz = make_voc_archives(tmp_path, voc, sbd)
    hostile = [_hostile_member(rng, outside) for _ in range(4)]
    with tarfile.open(voc_tar) as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
    with tarfile.open(voc_tar, "w", format=tarfile.PAX_FORMAT) as dst:
        for i, (m, data) in enumerate(members):
            if i == len(members) // 2:  # hostile members in the middle of the stream
                for h in hostile:
                    dst.addfile(h, io.BytesIO(bytes(h.size)) if h.isfile() else None)
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    out = tmp_path / "out"
    try:
        prepare_voc(voc_tar, sbd_tgz, out, workers=1, expected=voc_expected())
    except DataError:
        pass
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (outside / "keep.txt").read_text() == "untouched\n"
    assert not [p for p in out.rglob("*") if p.is_symlink()]
