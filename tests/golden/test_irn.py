"""tagseg's path index and random walk against numbers recorded from the official IRN code
(benchmarks/golden/record_irn.py)."""

import numpy as np
import torch

from tagseg.refine.pairs import build_path_index
from tagseg.refine.random_walk import propagate_to_boundary

from .conftest import assert_rel_close, case_tensors, golden_case


def test_path_index_radius_5_equals_official():
    out = golden_case("irn", "path_index_r5_10x14")["outputs"]
    pi = build_path_index(5, 10, 14)
    assert pi.offsets.tolist() == out["search_dst"]
    assert pi.src.tolist() == out["src_indices"]
    assert pi.dst.tolist() == out["dst_indices"]
    assert [p.tolist() for p in pi.path_indices] == out["path_indices"]


def test_path_index_radius_10_equals_official():
    out = golden_case("irn", "path_index_r10_24x30")["outputs"]
    pi = build_path_index(10, 24, 30)
    assert pi.offsets.tolist() == out["search_dst"]
    assert pi.src.tolist() == out["src_indices"]
    assert [list(p.shape) for p in pi.path_indices] == out["path_shapes"]
    assert [int(p.sum()) for p in pi.path_indices] == out["path_sums"]
    assert int(pi.dst.sum()) == out["dst_sum"]


def _check_propagate(name):
    case = golden_case("irn", name)
    t = case_tensors(case)
    p = case["params"]
    # the official walk squares a dense float32 matrix; ours multiplies by the sparse one in float64
    rw = propagate_to_boundary(t["x"].double(), t["edge"][0].double(), p["radius"], p["beta"], p["exp_times"])
    assert_rel_close(rw, case["outputs"]["rw_float64"], what=name)
    # the official float32 run: its 8 squarings of a float32 matrix round to ~6e-5 relative
    assert_rel_close(rw, case["outputs"]["rw"], rtol=2e-4, what=name + " float32")


def test_propagate_to_edge_equals_official():
    _check_propagate("propagate_3x9x11")


def test_propagate_to_edge_other_beta_and_exp_times():
    _check_propagate("propagate_2x16x13_beta8_t4")


def test_float32_walk_is_close_too():
    case = golden_case("irn", "propagate_3x9x11")
    t = case_tensors(case)
    rw = propagate_to_boundary(t["x"], t["edge"][0], 5, 10, 8)
    assert rw.dtype == torch.float32
    # both float32 runs round differently (sparse products vs dense squarings)
    np.testing.assert_allclose(rw.numpy(), np.asarray(case["outputs"]["rw_float64"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(rw.numpy(), np.asarray(case["outputs"]["rw"]), rtol=0, atol=1e-4)
