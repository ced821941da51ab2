"""PPC against the official code (usr922/wseg): golden values recorded by benchmarks/golden/record_wseg.py."""

from __future__ import annotations

import pytest
import torch

from tagseg.addons.ppc import PPCConfig, ppc_loss

from .conftest import assert_rel_close, assert_summary_close, case_tensors, load_golden

GOLDEN = load_golden("wseg")
CASES = {c["name"]: c for c in GOLDEN["cases"]}


def _replay(draws: list[dict]):
    """A pixel sampler returning the official run's random.sample draws, in order."""
    queue = list(draws)

    def sample(n: int, k: int) -> torch.Tensor:
        d = queue.pop(0)
        assert d["n"] == n and len(d["result"]) == k, f"draw order differs: official n={d['n']}, ours n={n}"
        return torch.tensor(d["result"], dtype=torch.long)

    return sample, queue


def _run(case: dict):
    x = case_tensors(case)
    v1 = x["f_proj1"].clone().requires_grad_(True)
    v2 = x["f_proj2"].clone().requires_grad_(True)
    labels = x["label"].view(x["label"].shape[0], -1)
    sampler, left = _replay(case["random_pixel_draws"])
    # tagseg's CAM family hands PPC the K-1 foreground maps; the official background channel is
    # overwritten by the constant bg_threshold before use, so dropping it changes nothing.
    cfg = PPCConfig(formulation="official", bg_score=case["params"]["bg_threshold"])
    loss, parts = ppc_loss(v1, x["cam_rv1_down"][:, 1:], v2, x["cam_rv2_down"][:, 1:], labels, cfg,
                           pixel_sampler=sampler)
    assert not left, f"{len(left)} official random draws were not replayed"
    loss.backward()
    return loss, parts, v1.grad, v2.grad


def test_golden_file_pins_the_official_commit():
    assert GOLDEN["source"]["repo"] == "usr922/wseg"
    assert GOLDEN["source"]["commit"].startswith("e96b961")


@pytest.mark.parametrize("name", sorted(CASES))
def test_ppc_matches_official_contrast_block(name):
    case = CASES[name]
    out = case["outputs"]
    loss, parts, g1, g2 = _run(case)
    assert_rel_close(loss, out["loss_nce"], what="total")
    assert_rel_close(0.1 * parts["cross_prototype"], out["loss_cross_nce"], what="cross-prototype")
    assert_rel_close(0.1 * parts["cross_cam"], out["loss_cross_nce2"], what="cross-CAM")
    assert_rel_close(0.1 * parts["intra"], out["loss_intra_nce"], what="intra")
    assert_summary_close(g1, case["grads"]["f_proj1"], what="grad f_proj1")
    assert_summary_close(g2, case["grads"]["f_proj2"], what="grad f_proj2")


def test_paper_formulation_is_far_from_the_official_values():
    """The earlier reading (present classes only, max-normalised CAMs) differs: the golden can fail."""
    case = CASES["grid16_seed0"]
    x = case_tensors(case)
    labels = x["label"].view(2, -1)
    loss, _ = ppc_loss(x["f_proj1"], x["cam_rv1_down"][:, 1:], x["f_proj2"], x["cam_rv2_down"][:, 1:], labels,
                       PPCConfig(formulation="paper"), generator=torch.Generator().manual_seed(0))
    assert abs(float(loss) - case["outputs"]["loss_nce"]) > 0.1 * case["outputs"]["loss_nce"]
