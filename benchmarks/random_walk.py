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


def time_dense_partially(x, boundary, radius, beta, squarings):
    """Seconds of the dense reference's parts: (build A and T, one squaring (the mean of
    ``squarings`` timed ones), the final product) — for grids where all of them take too long."""
    src, dst, aff = boundary_to_pair_affinity(boundary, radius)
    c, h, w = x.shape
    n = h * w
    t0 = time.perf_counter()
    a = torch.eye(n)
    a[src, dst] = aff
    a[dst, src] = aff
    t = a.pow(beta)
    del a
    t = t / t.sum(0, keepdim=True)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(squarings):
        t = t @ t
    square = (time.perf_counter() - t0) / squarings
    t0 = time.perf_counter()
    (x.reshape(c, n) * (1 - boundary).reshape(1, n)) @ t
    final = time.perf_counter() - t0
    return build, square, final


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="grid side (128 = 512 px / 4)")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--radius", type=int, default=5)
    ap.add_argument("--beta", type=float, default=10)
    ap.add_argument("--exp-times", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparse-runs", type=int, default=3, help="sparse timing: the median of this many runs")
    ap.add_argument("--partial-dense-above", type=int, default=10**9,
                    help="for larger grids time only --squarings of the dense squarings and estimate the whole")
    ap.add_argument("--squarings", type=int, default=1)
    ap.add_argument("--no-dense", action="store_true", help="sparse walk only (its peak memory, unmasked by a dense run)")
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
        if args.no_dense:
            pass
        elif size <= args.partial_dense_above:
            t0 = time.perf_counter()
            dense = run_dense(x, boundary, args.radius, args.beta, args.exp_times)
            row["dense_ms"] = (time.perf_counter() - t0) * 1000
            row["dense_mb"] = peak_rss_mb() - base
            row["max_diff"] = float((sparse - dense).abs().max())
        else:
            build, square, final = time_dense_partially(x, boundary, args.radius, args.beta, args.squarings)
            row["dense_ms"] = (build + args.exp_times * square + final) * 1000
            row["dense_mb"] = peak_rss_mb() - base
            row["estimated"] = f"build {build:.1f} s + {args.exp_times} × {square:.1f} s (mean of {args.squarings} " \
                               f"timed squaring(s)) + {final:.1f} s"
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
        diff = f"{r['max_diff']:.2e}" if "max_diff" in r else "–"
        star = " (est.)" if "estimated" in r else ""
        dense = (f"{r['dense_ms']:.0f}{star} | {r['dense_mb']:.0f} | {r['dense_ms'] / r['sparse_ms']:.1f}×{star} | {diff}"
                 if "dense_ms" in r else "not run | | |")
        lines.append(f"| {r['size']}×{r['size']} ({4 * r['size']}) | {r['sparse_ms']:.0f} | {r['sparse_mb']:.0f} | {dense} |")
    for r in rows:
        if "estimated" in r:
            lines.append(f"\n{r['size']}×{r['size']}: dense time estimated from its parts: {r['estimated']}; "
                         "its peak memory is measured (the matrices of every squaring are the same size).")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        from tagseg.utils.io import write_text
        write_text(args.out, text)


if __name__ == "__main__":
    main()
