"""Random walk: sparse transition over pairs within the radius vs the dense (h·w)² matrix
power of the official code, same process, same inputs.

Inputs are seeded: a boundary map (H, W) of random smooth blobs' edges and C seed maps. Each
grid size runs the sparse walk first, then the dense reference; time is wall-clock of the whole
propagation (pair affinities, transition, walk) and memory the growth of the process's peak
resident set over its value before the first run (sparse is measured before dense, so its
number is not hidden by the dense peak). IRN's defaults: radius 5, β 10, exp_times 8.

    python benchmarks/random_walk.py --sizes 32 64 128 --threads 1 --out benchmarks/results/random_walk.md
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch
import torch.nn.functional as F

from tagseg.refine.random_walk import boundary_to_pair_affinity, dense_random_walk, random_walk


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def inputs(size: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    blobs = F.avg_pool2d(torch.rand(1, classes, size, size, generator=g), 9, 1, 4, count_include_pad=False)[0]
    x = (blobs - blobs.amin()) / (blobs.amax() - blobs.amin())
    label = blobs.argmax(0).float()
    edge = ((label - F.max_pool2d(label[None, None], 3, 1, 1)[0, 0]).abs() > 0).float()
    boundary = F.avg_pool2d(edge[None, None], 3, 1, 1)[0, 0].clamp(0, 1)
    return x, boundary


def run_sparse(x, boundary, radius, beta, exp_times):
    src, dst, aff = boundary_to_pair_affinity(boundary, radius)
    return random_walk(x * (1 - boundary), src, dst, aff, beta, exp_times)


def run_dense(x, boundary, radius, beta, exp_times):
    src, dst, aff = boundary_to_pair_affinity(boundary, radius)
    return dense_random_walk(x * (1 - boundary), src, dst, aff, beta, exp_times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="grid side (128 = 512 px / 4)")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--radius", type=int, default=5)
    ap.add_argument("--beta", type=float, default=10)
    ap.add_argument("--exp-times", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparse-runs", type=int, default=3, help="sparse timing: the median of this many runs")
    ap.add_argument("--skip-dense-above", type=int, default=10**9, help="no dense run for larger grids")
    ap.add_argument("--out", default=None, help="markdown file to write (the table is printed anyway)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = peak_rss_mb()
    rows = []
    for size in args.sizes:
        x, boundary = inputs(size, args.classes)
        times = []
        for _ in range(args.sparse_runs):
            t0 = time.perf_counter()
            sparse = run_sparse(x, boundary, args.radius, args.beta, args.exp_times)
            times.append(time.perf_counter() - t0)
        sparse_ms = sorted(times)[len(times) // 2] * 1000
        sparse_mb = peak_rss_mb() - base
        row = {"size": size, "sparse_ms": sparse_ms, "sparse_mb": sparse_mb}
        if size <= args.skip_dense_above:
            t0 = time.perf_counter()
            dense = run_dense(x, boundary, args.radius, args.beta, args.exp_times)
            row["dense_ms"] = (time.perf_counter() - t0) * 1000
            row["dense_mb"] = peak_rss_mb() - base
            row["max_diff"] = float((sparse - dense).abs().max())
        rows.append(row)
        print(row, flush=True)

    lines = [
        "# Random walk: sparse transition vs dense matrix power",
        "",
        f"`python benchmarks/random_walk.py --sizes {' '.join(map(str, args.sizes))} --threads {args.threads}`"
        f" — radius {args.radius}, β {args.beta:g}, exp_times {args.exp_times} (2^{args.exp_times} steps), "
        f"{args.classes} seed maps, float32, CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{args.threads} thread(s).",
        "",
        "Memory: growth of the process's peak resident set (sparse measured first, dense after it).",
        "",
        "| grid (px image) | sparse ms | sparse peak MB | dense ms | dense peak MB | speed-up | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        dense = (f"{r['dense_ms']:.0f} | {r['dense_mb']:.0f} | {r['dense_ms'] / r['sparse_ms']:.1f}× | {r['max_diff']:.2e}"
                 if "dense_ms" in r else "not run | | |")
        lines.append(f"| {r['size']}×{r['size']} ({4 * r['size']}) | {r['sparse_ms']:.0f} | {r['sparse_mb']:.0f} | {dense} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from tagseg.utils.io import write_text
        write_text(args.out, text)


if __name__ == "__main__":
    main()
