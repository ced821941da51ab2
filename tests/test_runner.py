"""The per-image runner: shards, resume, temp clean-up, lock, workers, vanished folders, manifest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from runner_steps import Rec, build_write_value, write_value
from tagseg.errors import ConfigError, DataError, OutputError
from tagseg.runner import ManifestInfo, OutputLayout, WorkerStep, read_manifest, run_per_image, shard_of
from tagseg.utils.runlock import run_lock

RECS = [Rec(f"r{i}", i) for i in range(7)]


def layout(root: Path) -> OutputLayout:
    return OutputLayout(root, {"out": ("vals", "{id}.txt")})


def test_serial_run_writes_every_record_and_a_manifest_that_matches_the_files(tmp_path):
    info = ManifestInfo(stage="trial", settings={"k": 1}, config={"a": 1}, run="r", split="val", input="in")
    stats = run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=info)
    assert stats.written == 7 and stats.skipped == 0
    assert sorted(p.name for p in (tmp_path / "vals").iterdir()) == [f"r{i}.txt" for i in range(7)]
    assert (tmp_path / "vals" / "r3.txt").read_text() == "3\n"
    doc = read_manifest(tmp_path)
    assert doc["stage"] == "trial" and doc["split"] == "val" and doc["run"] == "r" and doc["input"] == "in"
    assert doc["settings"] == {"k": 1} and len(doc["config_hash"]) == 64 and doc["tagseg_version"]
    assert doc["counts"]["on_disk"] == {"out": 7, "complete": 7} and doc["counts"]["images"] == 7


def test_resume_skips_finished_records_and_overwrite_redoes_them(tmp_path):
    run_per_image(RECS[:3], write_value, layout(tmp_path), progress=False)
    (tmp_path / "vals" / "r1.txt").write_text("kept\n")
    stats = run_per_image(RECS, write_value, layout(tmp_path), progress=False)
    assert (stats.written, stats.skipped) == (4, 3)
    assert (tmp_path / "vals" / "r1.txt").read_text() == "kept\n"
    stats = run_per_image(RECS, write_value, layout(tmp_path), progress=False, overwrite=True)
    assert (stats.written, stats.skipped) == (7, 0) and (tmp_path / "vals" / "r1.txt").read_text() == "1\n"


def test_shards_split_the_set_exactly_once(tmp_path):
    assert [r.id for r in shard_of(RECS, (1, 3))] == ["r1", "r4"]
    with pytest.raises(DataError, match="invalid shard 3/3"):
        shard_of(RECS, (3, 3))
    for i in range(3):
        run_per_image(RECS, write_value, layout(tmp_path), shard=(i, 3), progress=False, manifest=ManifestInfo("t"))
        assert (tmp_path / f".lock.shard-{i}-of-3").is_file()
    assert len(list((tmp_path / "vals").iterdir())) == 7
    assert read_manifest(tmp_path)["counts"]["on_disk"]["complete"] == 7


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / "vals").mkdir()
    stale = tmp_path / "vals" / ".r2.txt.abcd1234.tmp.txt"
    stale.write_text("half")
    other = tmp_path / "vals" / ".unrelated"
    other.write_text("x")
    run_per_image(RECS, write_value, layout(tmp_path), progress=False)
    assert not stale.exists() and other.exists()


def test_an_escaping_id_is_refused_before_anything_is_created(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="outside the output folder"):
        run_per_image([Rec("ok"), Rec("../../x")], write_value, layout(out), progress=False)
    assert not out.exists()


def test_a_held_lock_stops_the_run(tmp_path):
    with run_lock(tmp_path / "o"):
        code = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
            from runner_steps import Rec, write_value
            from tagseg.runner import OutputLayout, run_per_image
            run_per_image([Rec("a")], write_value, OutputLayout({str(tmp_path / 'o')!r}, {{"out": ("{{id}}",)}}),
                          progress=False)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert proc.returncode != 0 and "RunLockedError" in proc.stderr and "in use" in proc.stderr
    with pytest.raises(ConfigError, match="step"):
        run_per_image(RECS, None, layout(tmp_path), progress=False)


def test_a_folder_that_vanishes_mid_run_is_an_error_not_a_silent_recreation(tmp_path):
    out = tmp_path / "out"

    def step(rec, paths):
        write_value(rec, paths)
        if rec.id == "r2":
            shutil.rmtree(out)

    with pytest.raises(OutputError, match="vanished"):
        run_per_image(RECS, step, layout(out), progress=False, lock=False)
    assert not out.exists()


def test_files_deleted_behind_the_runner_are_not_reported_as_written(tmp_path):
    def step(rec, paths):
        write_value(rec, paths)
        if rec.id == "r4":
            (tmp_path / "vals" / "r1.txt").unlink()

    with pytest.raises(OutputError, match=r"1 of the 7 images .* missing .*first: r1"):
        run_per_image(RECS, step, layout(tmp_path), progress=False)
    assert read_manifest(tmp_path) is None  # no manifest claims counts that are not on disk


def test_an_unwritable_folder_is_a_clear_output_error(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions")
    (tmp_path / "vals").mkdir()
    (tmp_path / "vals").chmod(0o500)
    try:
        with pytest.raises(OutputError, match="r0.txt"):
            run_per_image(RECS, write_value, layout(tmp_path), progress=False)
    finally:
        (tmp_path / "vals").chmod(0o700)


def test_worker_processes_write_the_same_files(tmp_path):
    run_per_image(RECS, write_value, layout(tmp_path / "serial"), progress=False)
    stats = run_per_image(RECS, None, layout(tmp_path / "pool"), progress=False, workers=2,
                          worker_step=WorkerStep(build_write_value), manifest=ManifestInfo("t"))
    assert stats.written == 7
    for i in range(7):
        assert (tmp_path / "pool" / "vals" / f"r{i}.txt").read_bytes() == \
            (tmp_path / "serial" / "vals" / f"r{i}.txt").read_bytes()
    with pytest.raises(ConfigError, match="worker_step"):
        run_per_image(RECS, write_value, layout(tmp_path / "x"), progress=False, workers=2)


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """kill -9 of the parent leaves no worker running (parent-death signal + watchdog)."""
    pids = tmp_path / "pids.txt"
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from runner_steps import Rec, build_slow_writer
        from tagseg.runner import OutputLayout, WorkerStep, run_per_image
        recs = [Rec(f"r{{i}}") for i in range(8)]
        run_per_image(recs, None, OutputLayout({str(tmp_path / 'o')!r}, {{"out": ("{{id}}",)}}), progress=False,
                      workers=2, worker_step=WorkerStep(build_slow_writer, (60.0, {str(pids)!r})))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(set(pids.read_text().split()) if pids.exists() else ()) < 2:
            time.sleep(0.2)
        workers = {int(p) for p in pids.read_text().split()}
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 20
    alive = workers
    while alive and time.time() < deadline:
        alive = {p for p in alive if _alive(p)}
        time.sleep(0.2)
    assert not alive


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (gone) parent is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_keep_going_lists_failed_records_and_counts_only_the_rest(tmp_path):
    def step(rec, paths):
        if rec.value % 3 == 0:
            raise DataError(f"cannot read {rec.id}")
        write_value(rec, paths)

    stats = run_per_image(RECS, step, layout(tmp_path), progress=False, keep_going=(DataError,),
                          manifest=ManifestInfo("t"))
    assert stats.failures == [("r0", "cannot read r0"), ("r3", "cannot read r3"), ("r6", "cannot read r6")]
    assert stats.written == 4
    assert read_manifest(tmp_path)["counts"]["on_disk"] == {"out": 4, "complete": 4}
    with pytest.raises(DataError, match="cannot read r0"):  # without keep_going the first error stops the run
        run_per_image(RECS, step, layout(tmp_path / "b"), progress=False)


def test_resuming_with_other_settings_is_refused_and_loses_nothing(tmp_path):
    first = ManifestInfo(stage="trial", settings={"walk": {"beta": 10, "exp_times": 8}}, split="train")
    run_per_image(RECS[:3], write_value, layout(tmp_path), progress=False, manifest=first)
    (tmp_path / "vals" / "r1.txt").write_text("kept\n")
    other = ManifestInfo(stage="trial", settings={"walk": {"beta": 8, "exp_times": 8}}, split="train")
    with pytest.raises(ConfigError, match=r"3 finished images made with other settings \(walk.beta: 10 -> 8\).*"
                                          r"--overwrite"):
        run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=other)
    assert sorted(p.name for p in (tmp_path / "vals").iterdir()) == ["r0.txt", "r1.txt", "r2.txt"]
    assert (tmp_path / "vals" / "r1.txt").read_text() == "kept\n"
    assert read_manifest(tmp_path)["settings"]["walk"]["beta"] == 10  # the folder still says what it holds
    stats = run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=other, overwrite=True)
    assert stats.written == 7 and read_manifest(tmp_path)["settings"]["walk"]["beta"] == 8
    assert run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=other).skipped == 7


def test_a_resume_may_change_how_it_runs_but_not_the_split(tmp_path):
    first = ManifestInfo(stage="trial", settings={"device": "cpu", "data": {"num_workers": 0, "max_images": 3}},
                         split="train")
    run_per_image(RECS[:3], write_value, layout(tmp_path), progress=False, manifest=first)
    moved = ManifestInfo(stage="trial", settings={"device": "cuda", "data": {"num_workers": 4, "max_images": 0}},
                         split="train")
    assert run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=moved).written == 4
    with pytest.raises(ConfigError, match=r"split: 'train' -> 'val'"):
        run_per_image(RECS, write_value, layout(tmp_path), progress=False,
                      manifest=ManifestInfo(stage="trial", settings=moved.settings, split="val"))


def test_a_killed_run_leaves_the_settings_its_files_were_made_with(tmp_path):
    def step(rec, paths):
        write_value(rec, paths)
        if rec.id == "r2":
            raise KeyboardInterrupt

    first = ManifestInfo(stage="trial", settings={"k": 1})
    with pytest.raises(KeyboardInterrupt):
        run_per_image(RECS, step, layout(tmp_path), progress=False, manifest=first)
    doc = read_manifest(tmp_path)
    assert doc["settings"] == {"k": 1} and doc["counts"] == {"finished": False}
    with pytest.raises(ConfigError, match="k: 1 -> 2"):
        run_per_image(RECS, write_value, layout(tmp_path), progress=False,
                      manifest=ManifestInfo(stage="trial", settings={"k": 2}))
    assert run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=first).skipped == 3


def test_a_folder_without_a_manifest_is_resumed_as_it_is(tmp_path):
    run_per_image(RECS[:2], write_value, layout(tmp_path), progress=False)
    stats = run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=ManifestInfo("t", {"k": 1}))
    assert (stats.written, stats.skipped) == (5, 2) and read_manifest(tmp_path)["counts"]["on_disk"]["complete"] == 7


def test_settings_added_to_tagseg_later_do_not_block_a_resume():
    from tagseg.runner.manifest import settings_differences

    old = {"stage": "refine", "split": "val", "settings": {"beta": 10}, "extra": {"family": "cam"}}
    later = ManifestInfo(stage="refine", split="val", settings={"beta": 10, "new_key": 1}, extra={"family": "cam"})
    assert settings_differences(old, later) == []
    assert settings_differences(old, ManifestInfo("refine")) == []  # a caller that states nothing
    assert settings_differences({**old, "split": None}, later) == []
    assert settings_differences(old, ManifestInfo("refine", {"beta": 8}, split="val", extra={"family": "cam"})) == [
        "beta: 10 -> 8"]


def test_finished_already_only_when_the_manifest_the_settings_and_every_file_agree(tmp_path):
    from tagseg.runner import finished_already

    info = ManifestInfo(stage="trial", settings={"k": 1}, split="val", models={"classifier": "a" * 64})
    assert finished_already(RECS, layout(tmp_path), info) is None  # nothing there
    run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=info)
    done = finished_already(RECS, layout(tmp_path), info)
    assert done is not None and (done.written, done.skipped) == (0, 7) and done.counts["on_disk"]["complete"] == 7
    before = (tmp_path / "manifest.json").read_bytes()
    moved = ManifestInfo(stage="trial", settings={"k": 1, "workers": 4}, split="val", run="elsewhere",
                         models={"classifier": "a" * 64})
    assert finished_already(RECS, layout(tmp_path), moved) is not None  # how it runs does not matter
    assert (tmp_path / "manifest.json").read_bytes() == before  # it only reads
    assert finished_already(RECS, layout(tmp_path), ManifestInfo("trial", {"k": 2}, split="val")) is None
    assert finished_already(RECS + [Rec("r7", 7)], layout(tmp_path), info) is None  # an image more
    (tmp_path / "vals" / "r4.txt").unlink()
    assert finished_already(RECS, layout(tmp_path), info) is None
    assert finished_already(RECS, layout(tmp_path), info, shard=(1, 2)) is not None  # r1, r3, r5 are there
    assert finished_already(RECS, layout(tmp_path), info, shard=(0, 2)) is None


def test_finished_already_is_none_while_a_run_is_unfinished(tmp_path):
    from tagseg.runner import finished_already
    from tagseg.runner.manifest import write_manifest

    info = ManifestInfo(stage="trial", settings={"k": 1})
    run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=info)
    write_manifest(tmp_path, info, {"finished": False})  # what a running (or killed) run leaves
    assert finished_already(RECS, layout(tmp_path), info) is None
    doc = read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**doc, "counts": "damaged"}))
    assert finished_already(RECS, layout(tmp_path), info) is None
    (tmp_path / "manifest.json").unlink()  # a folder of an older version without a manifest: the runner decides
    assert finished_already(RECS, layout(tmp_path), info) is None


def test_outputs_of_another_model_are_never_resumed_into(tmp_path):
    old = ManifestInfo(stage="trial", settings={"k": 1}, models={"classifier": "a" * 64})
    run_per_image(RECS[:3], write_value, layout(tmp_path), progress=False, manifest=old)
    retrained = ManifestInfo(stage="trial", settings={"k": 1}, models={"classifier": "b" * 64})
    with pytest.raises(ConfigError, match=r"3 finished images made with other settings \(models.classifier: 'a+' -> "
                                          r"'b+'\)"):
        run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=retrained)
    assert len(list((tmp_path / "vals").iterdir())) == 3 and read_manifest(tmp_path)["models"] == {"classifier": "a" * 64}
    # a folder written before models were recorded is resumed as it is
    (tmp_path / "manifest.json").write_text((tmp_path / "manifest.json").read_text().replace('"models"', '"unused"'))
    assert run_per_image(RECS, write_value, layout(tmp_path), progress=False, manifest=retrained).written == 4


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    from tagseg.runner import file_sha256

    data = bytes(range(256)) * 9000  # 2.3 MB: several chunks at either chunk size
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest() == file_sha256(tmp_path / "f")
    (tmp_path / "e").write_bytes(b"")
    assert file_sha256(tmp_path / "e") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
