"""The pooling ordering avg < max < top-K <= top-K + PCE (METHODS.md §1) on VOC through the command
line: each variant and seed is one ``pipeline_voc.py --family tkpcl --until seed`` call (the TKP-PCL
CPU recipe: Lite0 ImageNet, 320 px training = a 20 x 20 patch grid, 2 epochs; pseudo-masks at
320 px, one scale, no CRF), differing only in pooling and PCE (L_ET on in all, as in the paper's
rows). Prints the table: seed-mask mIoU on all train_aug and all val images, mean ± std over seeds,
the final fine-tuning epoch's MCE and PCE's share of the loss (lambda * PCE / MCE, from the runs'
history.jsonl); then each step of the ordering as differences paired by seed (a seed moves every
variant alike, so its effect cancels there).

    python benchmarks/ordering_voc.py --voc ../shared/data/voc12-subset --work runs/ordering20 --seeds 0 1 2
    python benchmarks/ordering_voc.py --work runs/ordering20 --seeds 0 1 2 --table-only   # what is cached

Runs are cached as ``<work>/<variant>-seed<s>/`` (pipeline_voc's folders: ``run/``, ``pseudo/``,
``eval_<split>_seed.json``, ``results.json``); an interrupted call resumes, seed-major (every
variant's seed 0 first), so a cut budget leaves whole seeds. Writes ``<work>/ordering.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks
import pipeline_voc  # noqa: E402
from patch_variants import ORDERING as VARIANTS, ORDERING_LABELS as LABELS  # noqa: E402
from seed_stats import mean_std  # noqa: E402

from tagseg.utils.io import write_text  # noqa: E402  (pipeline_voc put this checkout's src first)


def run_one(variant: str, seed: int, args: argparse.Namespace) -> None:
    pipeline_voc.main(["--voc", str(args.voc), "--family", "tkpcl", "--seed", str(seed), "--work", str(args.work),
                       "--name", f"{variant}-seed{seed}", "--until", "seed", "--threads", str(args.threads),
                       "--workers", str(args.workers), "--per-image-workers", str(args.per_image_workers),
                       "--train-set", *VARIANTS[variant], *args.train_set])


def read_run(folder: Path) -> Optional[dict]:
    """``{"train_aug", "val", "mce", "pce_share"}`` of a finished run folder (None if unfinished)."""
    results = folder / "results.json"
    if not results.is_file():
        return None
    doc = json.loads(results.read_text())
    if "val" not in doc or "train_aug" not in doc:
        return None
    history = [json.loads(line) for line in (Path(doc["run"]) / "history.jsonl").read_text().splitlines() if line]
    last = history[-1]
    return {"train_aug": doc["train_aug"]["seed"], "val": doc["val"]["seed"], "mce": last.get("mce"),
            "pce_share": [h.get("pce_mce_ratio") for h in history]}


def table(work: Path, seeds: list[int]) -> str:
    lines = ["| variant | seeds | train_aug | val | final MCE | λ·PCE / MCE per epoch |", "|---|---|---|---|---|---|"]
    for variant in VARIANTS:
        runs = {s: read_run(work / f"{variant}-seed{s}") for s in seeds}
        done = {s: r for s, r in runs.items() if r is not None}
        if not done:
            lines.append(f"| {LABELS[variant]} | 0 | - | - | - | - |")
            continue
        col = {k: [r[k] for r in done.values()] for k in ("train_aug", "val", "mce")}
        shares = [r["pce_share"] for r in done.values() if any(v is not None for v in r["pce_share"])]
        share = "; ".join(" → ".join(f"{v:.3f}" for v in s if v is not None) for s in shares) or "-"
        lines.append(f"| {LABELS[variant]} | {len(done)} ({', '.join(map(str, done))}) | "
                     f"{mean_std(col['train_aug'], scale=1)} ({', '.join(f'{v:.1f}' for v in col['train_aug'])}) | "
                     f"{mean_std(col['val'], scale=1)} ({', '.join(f'{v:.1f}' for v in col['val'])}) | "
                     f"{mean_std(col['mce'], scale=1, digits=3)} | {share} |")
    return "\n".join(lines)


def paired_table(work: Path, seeds: list[int]) -> str:
    """Each step of the ordering (max - avg, top-K - max, top-K + PCE - top-K) as per-seed differences
    on the same seed, mean ± std over the seeds both variants finished, and how many seeds put it the
    paper's way (> 0; top-K + PCE - top-K: >= 0). A seed moves every variant alike (same data order
    and initialisation), so its effect cancels in the difference, which the per-variant spreads
    of :func:`table` do not show."""
    order = list(VARIANTS)
    lines = ["| step of the ordering | seeds | train_aug difference | val difference | the paper's way (train_aug, val) |",
             "|---|---|---|---|---|"]
    for lower, upper in zip(order, order[1:]):
        pairs = {s: (read_run(work / f"{lower}-seed{s}"), read_run(work / f"{upper}-seed{s}")) for s in seeds}
        both = {s: (a, b) for s, (a, b) in pairs.items() if a is not None and b is not None}
        label = f"{LABELS[upper]} − {LABELS[lower]}"
        if not both:
            lines.append(f"| {label} | 0 | - | - | - |")
            continue
        cells, ways = [], []
        for split in ("train_aug", "val"):
            diffs = [b[split] - a[split] for a, b in both.values()]
            cells.append(f"{mean_std(diffs, scale=1)} ({', '.join(f'{d:+.1f}' for d in diffs)})")
            ways.append(sum(d >= 0 if upper == "topk+pce" else d > 0 for d in diffs))
        lines.append(f"| {label} | {len(both)} ({', '.join(map(str, both))}) | {cells[0]} | {cells[1]} | "
                     f"{ways[0]} of {len(both)}, {ways[1]} of {len(both)} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--voc", type=Path, default=Path("../shared/data/voc12-subset"))
    p.add_argument("--work", type=Path, default=Path("runs/ordering"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="data-loader workers of the training")
    p.add_argument("--per-image-workers", type=int, default=2)
    p.add_argument("--train-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides after the variant's (e.g. data.image_size=480 for a 30 x 30 grid)")
    p.add_argument("--table-only", action="store_true", help="print the table of what is cached; run nothing")
    args = p.parse_args(argv)
    args.voc, args.work = args.voc.resolve(), args.work.resolve()
    if not args.table_only:
        for seed in args.seeds:
            for variant in args.variants:
                run_one(variant, seed, args)
    text = table(args.work, args.seeds) + "\n\nPaired by seed (the upper variant minus the lower one, same seed):\n\n" \
        + paired_table(args.work, args.seeds)
    write_text(args.work / "ordering.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
