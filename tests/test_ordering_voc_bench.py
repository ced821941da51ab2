"""benchmarks/ordering_voc.py: the variants it runs (through pipeline_voc) and the table it reads
back from the cached run folders."""

from __future__ import annotations

import json

from conftest import load_benchmark


def _cached_run(work, name: str, train_aug: float, val: float, history: list[dict]) -> None:
    folder = work / name
    (folder / "run").mkdir(parents=True)
    (folder / "run" / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (folder / "results.json").write_text(json.dumps({"family": "tkpcl", "run": str(folder / "run"),
                                                     "train_aug": {"seed": train_aug}, "val": {"seed": val}}))


def test_each_variant_is_one_seed_only_pipeline_call_seed_major(monkeypatch, tmp_path):
    bench = load_benchmark("ordering_voc")
    calls = []
    monkeypatch.setattr(bench.pipeline_voc, "main", lambda argv: calls.append(argv) or 0)
    assert bench.main(["--voc", str(tmp_path), "--work", str(tmp_path / "w"), "--seeds", "0", "1",
                       "--variants", "avg", "topk+pce", "--train-set", "train.epochs=3"]) == 0
    names = [a[a.index("--name") + 1] for a in calls]
    assert names == ["avg-seed0", "topk+pce-seed0", "avg-seed1", "topk+pce-seed1"]  # whole seeds first
    for argv in calls:
        assert argv[argv.index("--until") + 1] == "seed" and argv[argv.index("--family") + 1] == "tkpcl"
        assert argv[-1] == "train.epochs=3"  # the caller's overrides come after the variant's
    assert "method.pooling=avg" in calls[0] and "method.pce_weight=0" in calls[0]
    assert "method.pooling=topk" in calls[1] and "method.pce_weight=0.01" in calls[1]
    assert (tmp_path / "w" / "ordering.md").is_file()


def test_table_reads_means_spreads_and_pce_share(tmp_path):
    bench = load_benchmark("ordering_voc")
    epoch = [{"epoch": 1, "mce": 0.2}, {"epoch": 2, "mce": 0.15}]
    _cached_run(tmp_path, "avg-seed0", 13.0, 15.0, epoch)
    _cached_run(tmp_path, "avg-seed1", 15.0, 17.0, [{"epoch": 1, "mce": 0.2}, {"epoch": 2, "mce": 0.17}])
    _cached_run(tmp_path, "topk+pce-seed0", 19.1, 20.5,
                [{"epoch": 1, "mce": 0.21, "pce_mce_ratio": 0.04}, {"epoch": 2, "mce": 0.154, "pce_mce_ratio": 0.075}])
    (tmp_path / "max-seed0").mkdir()  # started, unfinished: not counted
    rows = {line.split(" | ")[0].lstrip("| "): line for line in bench.table(tmp_path, [0, 1]).splitlines()}
    avg = rows["avg pooling + L_ET"]
    assert "| 2 (0, 1) | 14.0 ± 1.4 (13.0, 15.0) | 16.0 ± 1.4 (15.0, 17.0) | 0.160 ± 0.014 | - |" in avg
    assert "| 1 (0) | 19.1 (19.1) | 20.5 (20.5) | 0.154 | 0.040 → 0.075 |" in rows["top-K + PCE + L_ET (TKP-PCL)"]
    assert rows["max pooling + L_ET (ViT-PCM)"].endswith("| 0 | - | - | - | - |")


def test_paired_table_takes_differences_on_the_same_seed(tmp_path):
    bench = load_benchmark("ordering_voc")
    epoch = [{"epoch": 1, "mce": 0.2}]
    for name, tr, va in [("avg-seed0", 18.0, 20.6), ("avg-seed1", 16.5, 19.6), ("max-seed0", 17.5, 18.1),
                         ("max-seed1", 15.8, 18.9), ("topk-seed0", 18.9, 20.2), ("topk-seed1", 16.6, 19.8),
                         ("topk+pce-seed0", 19.1, 20.2)]:
        _cached_run(tmp_path, name, tr, va, epoch)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in bench.paired_table(tmp_path, [0, 1, 2]).splitlines()}
    # max - avg: -0.5 and -0.7 on train_aug (mean -0.6, sd 0.14), -2.5 and -0.7 on val (-1.6, sd 1.27)
    assert rows["max pooling + L_ET (ViT-PCM) − avg pooling + L_ET"].endswith(
        "| 2 (0, 1) | -0.6 ± 0.1 (-0.5, -0.7) | -1.6 ± 1.3 (-2.5, -0.7) | 0 of 2, 0 of 2 |")
    assert rows["top-K + L_ET − max pooling + L_ET (ViT-PCM)"].endswith(
        "| 2 (0, 1) | 1.1 ± 0.4 (+1.4, +0.8) | 1.5 ± 0.8 (+2.1, +0.9) | 2 of 2, 2 of 2 |")
    # only seed 0 has both; a tie counts the paper's way for top-K <= top-K + PCE
    assert rows["top-K + PCE + L_ET (TKP-PCL) − top-K + L_ET"].endswith(
        "| 1 (0) | 0.2 (+0.2) | 0.0 (+0.0) | 1 of 1, 1 of 1 |")
