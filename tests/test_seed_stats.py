"""benchmarks/seed_stats.py: the mean ± std cell of the benchmark tables."""

from __future__ import annotations

from conftest import load_benchmark


def test_mean_std_cells():
    mean_std = load_benchmark("seed_stats").mean_std
    assert mean_std([0.20, 0.22, 0.24]) == "22.0 ± 2.0"  # sample std of 20, 22, 24 is 2
    assert mean_std([0.2, None, 0.3]) == "25.0 ± 7.1"  # None (not run) is left out; sqrt(50) = 7.07
    assert mean_std([0.123]) == "12.3"
    assert mean_std([None]) == mean_std([]) == "-"
    assert mean_std([0.6412, 0.6388], scale=1.0, digits=3) == "0.640 ± 0.002"
