"""Pair losses against hand values, the sparse random walk against the dense matrix-power
reference, and PAR against a plain per-pixel loop."""

import math

import numpy as np
import pytest
import torch

from tagseg.errors import ConfigError
from tagseg.refine.losses import pair_losses
from tagseg.refine.pairs import pairs_in_grid
from tagseg.refine.par import NEIGHBOURS, par, par_seed_labels
from tagseg.refine.random_walk import (boundary_to_pair_affinity, dense_random_walk, propagate_to_boundary,
                                       random_walk, sparse_transition, walk_labels)


def test_pair_losses_hand_values():
    aff = torch.tensor([0.5, 0.9, 0.2, 0.8])
    bg = torch.tensor([1.0, 0, 0, 0])
    fg = torch.tensor([0, 1.0, 0, 0])
    neg = torch.tensor([0, 0, 1.0, 1.0])
    out = pair_losses(aff, bg, fg, neg)
    assert out.bg.item() == pytest.approx(math.log(2), abs=1e-4)             # -log 0.5
    assert out.fg.item() == pytest.approx(0.1053605, abs=1e-4)               # -log 0.9
    assert out.neg.item() == pytest.approx((0.2231436 + 1.6094379) / 2, abs=1e-4)  # -log 0.8, -log 0.2
    assert out.total.item() == pytest.approx(0.6931472 / 4 + 0.1053605 / 4 + 0.9162907 / 2, abs=1e-4)


def test_pair_losses_empty_sets_are_zero_and_gradients_flow():
    aff = torch.tensor([0.3, 0.6], requires_grad=True)
    zero = torch.zeros(2)
    out = pair_losses(aff, torch.tensor([1.0, 0]), zero, zero)
    assert out.fg.item() == 0 and out.neg.item() == 0
    out.total.backward()
    assert aff.grad[0] < 0 and aff.grad[1] == 0


@pytest.mark.parametrize("h,w,radius,beta,exp_times", [(4, 5, 2, 3, 2), (9, 7, 5, 10, 8), (16, 16, 5, 8, 8),
                                                      (32, 32, 5, 10, 8), (20, 32, 4, 2, 5)])
def test_sparse_walk_equals_dense_reference(h, w, radius, beta, exp_times):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.rand(3, h, w, generator=g, dtype=torch.float64)
    src, dst, _ = pairs_in_grid(h, w, radius)
    aff = torch.rand(len(src), generator=g, dtype=torch.float64)
    src, dst = torch.from_numpy(src), torch.from_numpy(dst)
    sparse = random_walk(x, src, dst, aff, beta, exp_times)
    dense = dense_random_walk(x, src, dst, aff, beta, exp_times)
    assert (sparse - dense).abs().max().item() < 1e-5
    # float32 walk, as run in the stage, against the float64 reference
    sparse32 = random_walk(x.float(), src, dst, aff.float(), beta, exp_times)
    assert (sparse32.double() - dense).abs().max().item() < 1e-5


def test_transition_columns_sum_to_one():
    src, dst, _ = pairs_in_grid(6, 6, 3)
    aff = torch.rand(len(src), dtype=torch.float64)
    t = sparse_transition(torch.from_numpy(src), torch.from_numpy(dst), aff, 36, 4).to_dense()
    torch.testing.assert_close(t.sum(1), torch.ones(36, dtype=torch.float64))


def test_walk_keeps_mass_inside_a_closed_boundary():
    # a boundary ring: the walk spreads the seed over its inside only; every output is a
    # weighted average of the inputs (T's columns sum to 1)
    b = torch.zeros(16, 16)
    b[3, 3:13] = b[12, 3:13] = b[3:13, 3] = b[3:13, 12] = 1
    x = torch.zeros(1, 16, 16)
    x[0, 7, 7] = 1
    out = propagate_to_boundary(x, b, radius=5, beta=10, exp_times=6)[0]
    inside = out[4:12, 4:12]
    assert inside.min() > 0 and out[:3].abs().max() < 1e-12 and out[13:].abs().max() < 1e-12
    assert out.max().item() <= 1.0 and out.min().item() >= 0.0


def test_boundary_affinity_takes_the_strongest_boundary_on_the_path():
    b = torch.zeros(3, 5)
    b[1, 2] = 0.8
    src, dst, aff = boundary_to_pair_affinity(b, radius=3)
    pairs = {(int(s), int(d)): float(a) for s, d, a in zip(src, dst, aff)}
    assert pairs[(5 + 1, 5 + 3)] == pytest.approx(0.2)        # (1,1)->(1,3) crosses (1,2)
    assert pairs[(0, 2)] == pytest.approx(1.0)                # (0,0)->(0,2) does not
    assert pairs[(2, 12)] == pytest.approx(0.2)               # (0,2)->(2,2) passes through it
    assert pairs[(1, 12)] == pytest.approx(0.2)               # (0,1)->(2,2): (1,2) is within 1 of the line
    assert pairs[(0, 10)] == pytest.approx(1.0)               # (0,0)->(2,0)


def test_walk_labels_scaling_and_keys():
    walked = torch.tensor([[[4.0, 0.5]], [[1.0, 2.0]]])      # two classes on a 1x2 grid; max 4
    assert walk_labels(walked, np.array([3, 9]), 0.25).tolist() == [[3, 9]]
    assert walk_labels(walked, np.array([3, 9]), 0.6).tolist() == [[3, 0]]


def test_walk_refuses_bad_input():
    with pytest.raises(ConfigError):
        random_walk(torch.zeros(2, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0), 2, 1)
    with pytest.raises(ConfigError, match="\\[0, 1\\]"):
        random_walk(torch.zeros(1, 2, 2), torch.tensor([0]), torch.tensor([1]), torch.tensor([1.5]), 2, 1)


def _par_loop(image, scores, dilations, num_iter, w1, w2):
    """PAR written out pixel by pixel (image (3, H, W), scores (K, H, W) already at image size)."""
    _, h, w = image.shape
    dists = [d * (math.sqrt(2) if dy and dx else 1.0) for d in dilations for dy, dx in NEIGHBOURS]
    mean_d = sum(dists) / len(dists)
    std_d = math.sqrt(sum((v - mean_d) ** 2 for v in dists) / (len(dists) - 1))
    pos = [math.exp(-(v / std_d / w1) ** 2) for v in dists]
    pos = [p / sum(pos) for p in pos]

    def at(arr, y, x):
        return arr[:, min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
    weights = np.zeros((len(dists), h, w))
    for y in range(h):
        for x in range(w):
            neigh = [at(image, y + dy * d, x + dx * d) for d in dilations for dy, dx in NEIGHBOURS]
            stack = np.stack(neigh)                                  # (N, 3)
            std = stack.std(axis=0, ddof=1)
            logits = [float(np.mean(-((np.abs(n - image[:, y, x]) / (std + 1e-8) / w1) ** 2))) for n in neigh]
            top = max(logits)
            e = [math.exp(v - top) for v in logits]
            for n in range(len(neigh)):
                weights[n, y, x] = e[n] / sum(e) + w2 * pos[n]
    cur = scores.copy()
    for _ in range(num_iter):
        nxt = np.zeros_like(cur)
        for y in range(h):
            for x in range(w):
                k = 0
                for d in dilations:
                    for dy, dx in NEIGHBOURS:
                        nxt[:, y, x] += weights[k, y, x] * at(cur, y + dy * d, x + dx * d)
                        k += 1
        cur = nxt
    return cur


def test_par_equals_per_pixel_loop():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (3, 7, 9))
    scores = rng.uniform(0, 1, (2, 7, 9))
    got = par(torch.tensor(image[None]), torch.tensor(scores[None]), dilations=(1, 2, 3), num_iter=3)[0]
    want = _par_loop(image, scores, (1, 2, 3), 3, 0.3, 0.01)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)


def test_par_seed_labels_two_thresholds():
    image = np.zeros((96, 96, 3), np.uint8)
    image[16:80, 16:80] = 220
    scores = np.zeros((1, 96, 96), np.float32)
    scores[0, 20:76, 20:76] = 1.0
    out = par_seed_labels(image, scores, np.array([12]))
    assert (out[30:66, 30:66] == 12).all()
    assert (out[:6, :6] == 0).all()
    assert set(np.unique(out).tolist()) <= {0, 12, 255}


class _FakeBoundaryNet:
    """Stands in for a trained BoundaryNet: a fixed boundary map on the stride-4 grid."""

    def __init__(self, boundary: torch.Tensor) -> None:
        self.boundary = boundary

    def boundary_probs(self, image: torch.Tensor, flip: bool = True) -> torch.Tensor:
        return self.boundary


class _FakeAffinityNet:
    """Stands in for a trained AffinityNet: fixed affinity features on the stride-8 grid."""

    def __init__(self, feats: torch.Tensor) -> None:
        self.feats = feats

    def affinity_features(self, image: torch.Tensor) -> torch.Tensor:
        return self.feats


def _seeds(h: int, w: int, keys, seed: int = 0):
    from tagseg.refine.seeds import Seeds
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(len(keys), h, w, generator=g).numpy()
    return Seeds(scores, np.asarray(keys, dtype=np.int64), torch.zeros(21, h, w))


def test_irn_mask_is_the_thresholded_walk_of_irn_walk():
    import torch.nn.functional as F

    from tagseg.config import RefineConfig
    from tagseg.refine.stage import irn_mask, irn_walk
    h, w = 37, 50
    image = np.zeros((h, w, 3), np.uint8)
    seeds = _seeds(h, w, [3, 12])
    boundary = torch.rand(10, 13, generator=torch.Generator().manual_seed(1))
    cfg = RefineConfig()
    cfg.irn.exp_times = 3
    net = _FakeBoundaryNet(boundary)
    up = irn_walk(net, image, seeds, cfg, "cpu")
    # the plain pipeline: seeds averaged onto the grid, damped and walked, upsampled to the image
    x = F.adaptive_avg_pool2d(torch.from_numpy(seeds.scores)[None], (10, 13))[0]
    ref = propagate_to_boundary(x, boundary, 5, cfg.irn.beta, 3)
    ref = F.interpolate(ref[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(up, ref)
    for thres in (0.25, 0.6):
        cfg.irn.bg_thres_walk = thres
        np.testing.assert_array_equal(irn_mask(net, image, seeds, cfg, "cpu"),
                                      walk_labels(up, seeds.keys, thres).numpy().astype(np.uint8))


def test_psa_walk_of_several_alphas_equals_one_walk_per_alpha():
    from tagseg.config import RefineConfig
    from tagseg.refine.stage import psa_mask, psa_walk
    h, w = 41, 44
    image = np.zeros((h, w, 3), np.uint8)
    seeds = _seeds(h, w, [1, 7, 15], seed=2)
    feats = torch.rand(1, 8, 6, 6, generator=torch.Generator().manual_seed(3))
    net = _FakeAffinityNet(feats)
    cfg = RefineConfig()
    cfg.psa.logt = 3
    bgs, fg = psa_walk(net, image, seeds, cfg, "cpu", [4.0, 16.0])
    assert bgs.shape == (2, h, w) and fg.shape == (3, h, w)
    for i, alpha in enumerate((4.0, 16.0)):
        bg1, fg1 = psa_walk(net, image, seeds, cfg, "cpu", [alpha])
        torch.testing.assert_close(bgs[i:i + 1], bg1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fg, fg1, rtol=1e-5, atol=1e-6)
        cfg.psa.walk_alpha = alpha
        keys = np.array([0, 1, 7, 15])
        expected = keys[torch.cat([bg1, fg1]).argmax(0).numpy()]
        np.testing.assert_array_equal(psa_mask(net, image, seeds, cfg, "cpu"), expected)


def test_walk_with_an_oracle_boundary_recovers_a_blurred_object():
    """A square object whose seed is a blur of it (the best threshold of the seed alone: IoU < 0.85);
    walked inside a one-cell ring of boundary just outside it, the object's cells share one score
    and the background another, so a wide range of background thresholds gives the object exactly."""
    from scipy.ndimage import binary_dilation, gaussian_filter
    inner = np.zeros((32, 32), bool)
    inner[8:24, 10:26] = True
    seed = gaussian_filter(inner.astype(np.float32), 5)
    x = torch.from_numpy(seed / seed.max())[None]
    ring = torch.from_numpy((binary_dilation(inner) & ~inner).astype(np.float32))
    walked = propagate_to_boundary(x, ring, 5, 10, 8)

    def iou(labels):
        pred = labels.numpy() > 0
        return (pred & inner).sum() / (pred | inner).sum()
    assert max(iou(walk_labels(x, [5], t)) for t in np.arange(0.05, 1.0, 0.05)) < 0.85
    for t in (0.3, 0.5, 0.7):
        assert iou(walk_labels(walked, [5], t)) == 1.0
