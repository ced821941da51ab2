"""Stage-by-stage measurements of IRN on a few VOC images: where does the gain go?

For one cached CAM run of ``benchmarks/refine_voc.py`` (``<work>/cam-seed<s>``) and the first
``--images`` ids of a split, measures

1. the inter-pixel relation labels: fractions foreground / background / unsure against the ground
   truth's foreground / background fractions, and how often a confident label is right;
2. the boundary map of the trained branch on the stride grid: its spread, and its mean on ground-truth
   class-boundary cells against the other cells (plus the ranking AUC of the two);
3. the walk: how many grid cells change label, and the mIoU of the masks (several walk background
   thresholds) with the learned boundary, with an oracle boundary (ground-truth class edges), with
   no boundary at all, and without any walk (the seeds through the same grid and upsampling); and
   the ceiling of any boundary-guided propagation of these seeds: each seed averaged over each
   ground-truth class region ("region").

The IRN head is trained (labels + branch, ``refine_voc.py``'s settings) into ``--head-dir`` unless
its model file is there. Results go to a JSON file and a short text table.

    python benchmarks/irn_diagnose.py --voc DATA --work runs/refine_voc --seed 0 --images 30 \\
        --head-dir runs/refine_voc/cam-seed0/diag --out runs/refine_voc/cam-seed0/diag/diagnosis.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from refine_voc import cam_config  # noqa: E402

from tagseg.data.build import build_index  # noqa: E402
from tagseg.data.views import image_to_tensor  # noqa: E402
from tagseg.metrics.miou import ConfusionMatrix, iou_from_matrix  # noqa: E402
from tagseg.inference.loading import load_trained_model  # noqa: E402
from tagseg.refine.labels import IGNORE, irn_seed_labels  # noqa: E402
from tagseg.refine.run import train_refine_net  # noqa: E402
from tagseg.refine.stage import grid_scores, upsample_walk  # noqa: E402
from tagseg.refine.random_walk import propagate_to_boundary, walk_labels  # noqa: E402
from tagseg.refine.seeds import seeds_of  # noqa: E402
from tagseg.refine.train import load_refine_net  # noqa: E402
from tagseg.utils.io import read_image, read_mask, write_json  # noqa: E402

WALK_BG = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)


def gt_edges(gt: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels whose 4-neighbourhood holds another class, or the ground truth's 255 band."""
    edge = gt == IGNORE
    for a, b in ((gt[1:], gt[:-1]), (gt[:, 1:], gt[:, :-1])):
        diff = a != b
        if a.shape[0] != gt.shape[0]:
            edge[1:] |= diff
            edge[:-1] |= diff
        else:
            edge[:, 1:] |= diff
            edge[:, :-1] |= diff
    return edge


def edges_on_grid(edge: np.ndarray, grid: tuple[int, int], stride: int) -> torch.Tensor:
    """float (h, w): 1 on grid cells whose stride × stride block holds an edge pixel."""
    t = torch.from_numpy(edge.astype(np.float32))[None, None]
    t = F.pad(t, [0, grid[1] * stride - edge.shape[1], 0, grid[0] * stride - edge.shape[0]])
    return F.max_pool2d(t, stride)[0, 0]


def region_average(scores: np.ndarray, gt: np.ndarray) -> torch.Tensor:
    """(C, H, W): each class's seed averaged over every ground-truth class region (255 its own region),
    what a walk that stopped exactly at the true class boundaries and mixed each region completely
    would give: the ceiling of boundary-guided propagation for these seeds."""
    out = np.empty_like(scores)
    for c in np.unique(gt):
        region = gt == c
        out[:, region] = scores[:, region].mean(1, keepdims=True)
    return torch.from_numpy(out)


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half (Mann-Whitney); callers subsample large sets."""
    if not len(pos) or not len(neg):
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    # average ranks of ties
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def new_label_counts() -> dict[str, int]:
    return dict.fromkeys(("gt_fg", "gt_bg", "fg", "bg", "unsure", "fg_right", "bg_right", "n"), 0)


def count_labels(acc: dict[str, int], labels: np.ndarray, gt: np.ndarray) -> None:
    """Add one image's relation labels (0 bg, class, IGNORE unsure) against its ground truth to ``acc``."""
    valid = gt != IGNORE
    fg, bg = valid & (labels > 0) & (labels != IGNORE), valid & (labels == 0)
    acc["n"] += int(valid.sum())
    acc["gt_fg"] += int((valid & (gt > 0)).sum())
    acc["gt_bg"] += int((gt == 0).sum())
    acc["fg"] += int(fg.sum())
    acc["bg"] += int(bg.sum())
    acc["unsure"] += int((valid & (labels == IGNORE)).sum())
    acc["fg_right"] += int((fg & (labels == gt)).sum())
    acc["bg_right"] += int((bg & (gt == 0)).sum())


def label_fractions(acc: dict[str, int]) -> dict[str, float]:
    """Shares of the scored pixels labelled fg / bg / unsure (and fg / bg in the ground truth), and
    the labels' fg and bg precision."""
    n = max(acc["n"], 1)
    return {"gt_fg": acc["gt_fg"] / n, "gt_bg": acc["gt_bg"] / n, "fg": acc["fg"] / n, "bg": acc["bg"] / n,
            "unsure": acc["unsure"] / n, "fg_precision": acc["fg_right"] / max(acc["fg"], 1),
            "bg_precision": acc["bg_right"] / max(acc["bg"], 1)}


def miou(cm: ConfusionMatrix) -> float:
    return float(np.nanmean(iou_from_matrix(cm.matrix)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc", required=True)
    ap.add_argument("--work", type=Path, default=Path("runs/refine_voc"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="train_aug")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--head-dir", type=Path, required=True, help="run-like folder for the diagnosed IRN head")
    ap.add_argument("--bg", type=float, default=None, help="seed background threshold (default: the cached val choice)")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--head-images", type=int, default=100)
    ap.add_argument("--head-epochs", type=int, default=2)
    ap.add_argument("--head-batch", type=int, default=8)
    ap.add_argument("--irn-crop", type=int, default=192)
    ap.add_argument("--psa-crop", type=int, default=192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides (e.g. refine.irn.fg_thres=0.5)")
    ap.add_argument("--label-sweep", nargs="*", default=None, metavar="FG:BG",
                    help="only measure the relation labels, at these fg_thres:bg_thres pairs (e.g. 0.3:0.05 0.6:0.15)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.label_sweep is not None:
        return label_sweep(args)
    torch.set_num_threads(args.threads)
    work = args.work / f"cam-seed{args.seed}"
    model, _, info = load_trained_model(work / "model.safetensors")
    family = info["family"]
    if args.bg is None:
        import json
        args.bg = json.loads((work / "bench" / "seed_bg_sweep_val.json").read_text())["best"]["threshold"]
    extra = [f"pseudo.bg_threshold={args.bg}", *args.set]
    head_cfg = cam_config(args, args.seed, args.head_images, extra)
    t0 = time.time()
    path = args.head_dir / "refine" / "irn" / "model.safetensors"
    if not path.is_file():
        path = train_refine_net(model, head_cfg, args.head_dir, "irn", family, "cpu", resume=True, progress=False)
    head_seconds = round(time.time() - t0, 1)
    net = load_refine_net(model, head_cfg, path, "irn", "cpu")
    cfg = cam_config(args, args.seed, args.images, extra)
    c = cfg.refine.irn
    index = build_index(cfg.data, args.split)
    k = index.num_classes

    lab = new_label_counts()
    b_on, b_off, b_all = [], [], []
    top_fg, top_bg = [], []
    variants = ("seed", "region", "none", "learned", "learned_noflip", "oracle", "zero")
    cms = {(v, t): ConfusionMatrix(k) for v in variants for t in WALK_BG}
    changed = {v: [] for v in variants}
    t0 = time.time()
    for rec in index.records:
        image = read_image(rec.image_path)
        gt = read_mask(rec.mask_path, k)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, family)
        if not len(seeds.keys):
            continue
        h, w = gt.shape
        valid = gt != IGNORE
        top = seeds.scores.max(0)
        top_fg.append(top[valid & (gt > 0)])
        top_bg.append(top[gt == 0])
        # 1. labels (as the head's training labels: the run's settings)
        labels = irn_seed_labels(image, seeds.scores, seeds.keys, c.fg_thres, c.bg_thres, backend=cfg.refine.crf,
                                 gt_prob=c.label_gt_prob)
        count_labels(lab, labels, gt)
        # 2. boundary
        tensor = image_to_tensor(image)
        boundary = net.boundary_probs(tensor, flip=True)
        boundary_nf = net.boundary_probs(tensor, flip=False)
        grid = tuple(boundary.shape)
        edge = edges_on_grid(gt_edges(gt), grid, c.stride)
        b = boundary.numpy().ravel()
        e = edge.numpy().ravel() > 0
        b_on.append(b[e])
        b_off.append(b[~e])
        b_all.append(b)
        # 3. walks
        x = grid_scores(seeds.scores, grid)
        walked = {
            "none": x,
            "learned": propagate_to_boundary(x, boundary, c.radius, c.beta, c.exp_times),
            "learned_noflip": propagate_to_boundary(x, boundary_nf, c.radius, c.beta, c.exp_times),
            "oracle": propagate_to_boundary(x, edge, c.radius, c.beta, c.exp_times),
            "zero": propagate_to_boundary(x, torch.zeros_like(boundary), c.radius, c.beta, c.exp_times),
        }
        up = {name: upsample_walk(v, (h, w)) for name, v in walked.items()}
        up["seed"] = torch.from_numpy(seeds.scores)
        up["region"] = region_average(seeds.scores, gt)
        base = {t: walk_labels(up["none"], seeds.keys, t) for t in WALK_BG}
        for name, u in up.items():
            for t in WALK_BG:
                pred = walk_labels(u, seeds.keys, t)
                cms[(name, t)].update(pred.numpy().astype(np.uint8), gt)
                if t == c.bg_thres_walk:
                    changed[name].append(float((pred != base[t]).float().mean()))
    seconds = round(time.time() - t0, 1)
    b_on, b_off, b_all = np.concatenate(b_on), np.concatenate(b_off), np.concatenate(b_all)
    top_fg, top_bg = np.concatenate(top_fg), np.concatenate(top_bg)
    res = {
        "images": len(index.records), "split": args.split, "seed_bg": args.bg, "overrides": args.set,
        "head_seconds": head_seconds, "diagnose_seconds": seconds,
        "labels": label_fractions(lab),
        "seeds": {"top_mean_on_gt_fg": float(top_fg.mean()), "top_mean_on_gt_bg": float(top_bg.mean()),
                  "auc_fg_over_bg": auc(top_fg[::7], top_bg[::7])},
        "boundary": {"mean": float(b_all.mean()), "std": float(b_all.std()),
                     "quantiles_5_50_95": [float(q) for q in np.quantile(b_all, [0.05, 0.5, 0.95])],
                     "mean_on_gt_edges": float(b_on.mean()), "mean_elsewhere": float(b_off.mean()),
                     "gt_edge_fraction": float(len(b_on) / len(b_all)), "auc": auc(b_on, b_off)},
        "changed_vs_no_walk": {n: float(np.mean(v)) for n, v in changed.items()},
        "miou": {n: {str(t): miou(cms[(n, t)]) for t in WALK_BG} for n in variants},
    }
    write_json(args.out, res)
    print(report(res))
    return 0


def label_stats(index, model, family, cfg, pairs) -> dict:
    """Relation-label fractions and precisions of each (fg_thres, bg_thres) pair on ``index``."""
    acc = {p: new_label_counts() for p in pairs}
    k = index.num_classes
    for rec in index.records:
        image = read_image(rec.image_path)
        gt = read_mask(rec.mask_path, k)
        seeds = seeds_of(model, image, rec.labels, cfg.pseudo, family)
        if not len(seeds.keys):
            continue
        for p in pairs:
            labels = irn_seed_labels(image, seeds.scores, seeds.keys, p[0], p[1], backend=cfg.refine.crf,
                                     gt_prob=cfg.refine.irn.label_gt_prob)
            count_labels(acc[p], labels, gt)
    return {f"{p[0]}:{p[1]}": label_fractions(a) for p, a in acc.items()}


def label_sweep(args) -> int:
    import json
    work = args.work / f"cam-seed{args.seed}"
    model, _, info = load_trained_model(work / "model.safetensors")
    if args.bg is None:
        args.bg = json.loads((work / "bench" / "seed_bg_sweep_val.json").read_text())["best"]["threshold"]
    cfg = cam_config(args, args.seed, args.images, [f"pseudo.bg_threshold={args.bg}", *args.set])
    pairs = [tuple(float(v) for v in item.split(":")) for item in args.label_sweep]
    res = label_stats(build_index(cfg.data, args.split), model, info["family"], cfg, pairs)
    write_json(args.out, {"split": args.split, "images": args.images, "labels": res})
    for key, r in res.items():
        print(f"{key:10s} fg {r['fg']:.3f} bg {r['bg']:.3f} unsure {r['unsure']:.3f} | gt fg {r['gt_fg']:.3f} | "
              f"precision fg {r['fg_precision']:.3f} bg {r['bg_precision']:.3f}")
    return 0


def report(res: dict) -> str:
    lab, bd = res["labels"], res["boundary"]
    lines = [f"{res['images']} {res['split']} images, seed bg {res['seed_bg']}, overrides {res['overrides']}",
             f"labels: fg {lab['fg']:.3f} bg {lab['bg']:.3f} unsure {lab['unsure']:.3f} | gt fg {lab['gt_fg']:.3f} "
             f"bg {lab['gt_bg']:.3f} | precision fg {lab['fg_precision']:.3f} bg {lab['bg_precision']:.3f}",
             f"seeds: top score on gt fg {res['seeds']['top_mean_on_gt_fg']:.3f} on gt bg "
             f"{res['seeds']['top_mean_on_gt_bg']:.3f} auc {res['seeds']['auc_fg_over_bg']:.3f}",
             f"boundary: mean {bd['mean']:.3f} std {bd['std']:.3f} q5/50/95 "
             f"{'/'.join(f'{q:.3f}' for q in bd['quantiles_5_50_95'])} | on gt edges {bd['mean_on_gt_edges']:.3f} "
             f"elsewhere {bd['mean_elsewhere']:.3f} (edge cells {bd['gt_edge_fraction']:.3f}) auc {bd['auc']:.3f}",
             "mIoU by walk background threshold: " + " ".join(str(t) for t in WALK_BG)]
    for name, row in res["miou"].items():
        ch = res["changed_vs_no_walk"].get(name)
        lines.append(f"  {name:15s} " + " ".join(f"{100 * v:5.1f}" for v in row.values())
                     + (f"   changed {100 * ch:.1f}%" if ch is not None else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
