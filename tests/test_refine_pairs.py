"""Pair indices, paths and affinity labels of the refinement stage on hand-worked grids."""

import numpy as np
import pytest
import torch

from tagseg.errors import ConfigError
from tagseg.refine.labels import combine_confident, irn_seed_labels, label_unary_probs, pair_labels, psa_seed_labels
from tagseg.refine.pairs import build_path_index, offset_path, pairs_in_grid, search_offsets


def test_search_offsets_radius_2_and_5():
    assert search_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
    offs = search_offsets(5)
    assert len(offs) == 34                       # 4 + 9 + 9 + 7 + 5
    assert offs[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert (3, 4) not in offs and (3, 3) in offs and (4, 2) in offs and (4, 3) not in offs


def test_offset_paths_by_hand():
    assert offset_path(0, 1).tolist() == [[0, 1], [0, 0]]
    assert offset_path(1, 1).tolist() == [[1, 1], [0, 1], [1, 0], [0, 0]]
    assert offset_path(1, -1).tolist() == [[1, -1], [0, -1], [1, 0], [0, 0]]
    # (2, 1): every pixel of the 3x2 box is within distance 1 of the line
    assert offset_path(2, 1).tolist() == [[2, 1], [1, 1], [2, 0], [0, 1], [1, 0], [0, 0]]
    # (0, 3): the straight row
    assert offset_path(0, 3).tolist() == [[0, 3], [0, 2], [0, 1], [0, 0]]


def test_path_index_radius_2_on_3x4():
    pi = build_path_index(2, 3, 4)
    assert pi.src.tolist() == [1, 2, 5, 6]
    # grouped by path length: (0,1), (1,0) have 2 pixels; (1,-1), (1,1) have 4
    assert pi.offsets.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    assert pi.dst.tolist() == [[2, 3, 6, 7], [5, 6, 9, 10], [4, 5, 8, 9], [6, 7, 10, 11]]
    assert [p.shape for p in pi.path_indices] == [(2, 2, 4), (2, 4, 4)]
    # path of (1, 1) from source 1: pixels 6, 2, 5, 1
    assert pi.path_indices[1][1][:, 0].tolist() == [6, 2, 5, 1]


def test_path_index_refuses_small_grid_and_bad_radius():
    with pytest.raises(ConfigError, match="too small"):
        build_path_index(5, 4, 20)
    with pytest.raises(ConfigError, match="radius"):
        search_offsets(1)


def test_pairs_in_grid_cover_every_close_pair_once():
    h, w, r = 5, 6, 3
    src, dst, _ = pairs_in_grid(h, w, r)
    got = {(int(a), int(b)) for a, b in zip(src, dst)}
    assert len(got) == len(src)
    want = set()
    for i in range(h * w):
        for j in range(i + 1, h * w):
            (yi, xi), (yj, xj) = divmod(i, w), divmod(j, w)
            if (yi - yj) ** 2 + (xi - xj) ** 2 < r * r:
                want.add((i, j))
    assert got == want


LABELS_4x4 = np.array([[0, 0, 1, 1],
                       [0, 255, 1, 1],
                       [0, 0, 2, 2],
                       [0, 0, 2, 2]], dtype=np.uint8)


def test_pair_labels_on_hand_worked_4x4():
    src, dst, oid = pairs_in_grid(4, 4, 2)
    assert len(src) == 42                                # 12 + 12 + 9 + 9
    bg, fg, neg = pair_labels(LABELS_4x4, src, dst)
    # counted by hand per offset: (0,1) 3/4/3, (1,-1) 2/2/3, (1,0) 4/4/2, (1,1) 2/2/3
    per_offset = [(3, 4, 3), (2, 2, 3), (4, 4, 2), (2, 2, 3)]
    for k, want in enumerate(per_offset):
        sel = torch.from_numpy(oid == k)
        assert (int(bg[sel].sum()), int(fg[sel].sum()), int(neg[sel].sum())) == want, k
    assert (bg + fg + neg).max() == 1
    # the 8 pairs touching the unsure pixel (1, 1) are in no set
    touching = torch.from_numpy((src == 5) | (dst == 5))
    assert int(touching.sum()) == 8 and float((bg + fg + neg)[touching].sum()) == 0
    pairs = {(int(a), int(b)): (float(x), float(y), float(z)) for a, b, x, y, z in zip(src, dst, bg, fg, neg)}
    assert pairs[(0, 1)] == (1, 0, 0) and pairs[(2, 3)] == (0, 1, 0) and pairs[(6, 10)] == (0, 0, 1)


def test_pair_labels_broadcast_like_irn():
    pi = build_path_index(2, 4, 4)
    bg, fg, neg = pair_labels(LABELS_4x4, pi.src, pi.dst)
    assert bg.shape == fg.shape == neg.shape == pi.dst.shape


def test_label_unary_probs():
    p = label_unary_probs(np.array([[0, 2]]), 3, 0.7)
    np.testing.assert_allclose(p[:, 0, 0], [0.7, 0.15, 0.15], rtol=1e-6)
    np.testing.assert_allclose(p[:, 0, 1], [0.15, 0.15, 0.7], rtol=1e-6)


def test_combine_confident():
    fg = np.array([[3, 0, 0]])
    bg = np.array([[3, 3, 0]])
    assert combine_confident(fg, bg).tolist() == [[3, 255, 0]]


def _identity_crf(image, probs):
    return probs


# 6x6 seed: one class (id 15) with a confident core, a weak ring and a background corner
SCORES_6x6 = np.array([[0.01, 0.01, 0.01, 0.01, 0.01, 0.01],
                       [0.01, 0.20, 0.20, 0.20, 0.20, 0.01],
                       [0.01, 0.20, 0.50, 0.50, 0.20, 0.01],
                       [0.01, 0.20, 0.50, 0.90, 0.20, 0.01],
                       [0.01, 0.20, 0.20, 0.20, 0.20, 0.01],
                       [0.01, 0.01, 0.01, 0.01, 0.01, 0.04]], dtype=np.float32)[None]


def test_irn_seed_labels_thresholds_on_6x6():
    image = np.zeros((6, 6, 3), np.uint8)
    out = irn_seed_labels(image, SCORES_6x6, np.array([15]), crf=_identity_crf)
    # >= 0.30: class 15 in both maps; 0.20 lies between the thresholds: unsure;
    # <= 0.05: background in both
    want = np.where(SCORES_6x6[0] > 0.30, 15, np.where(SCORES_6x6[0] > 0.05, 255, 0))
    assert out.tolist() == want.tolist()


def test_psa_seed_labels_alphas_on_6x6():
    image = np.zeros((6, 6, 3), np.uint8)
    out = psa_seed_labels(image, SCORES_6x6, np.array([15]), crf=_identity_crf)
    # 0.5: (0.5)^4 = 0.06 < 0.5 -> fg at low α; 0.2: 0.8^4 = 0.41 > 0.2 -> bg at low α,
    # 0.8^32 = 8e-4 < 0.2 -> fg at high α -> unsure; 0.01: 0.99^32 = 0.72 -> bg at both
    # 0.04: 0.96^4 = 0.85 bg; 0.96^32 = 0.27 > 0.04 bg -> background
    want = np.where(SCORES_6x6[0] >= 0.5, 15, np.where(SCORES_6x6[0] > 0.1, 255, 0))
    assert out.tolist() == want.tolist()


def test_psa_high_alpha_background_overrides_low_alpha_class():
    # a CRF that swaps the roles: low α map says class, high α map says background
    calls = []

    def crf(image, probs):
        calls.append(probs)
        out = np.zeros_like(probs)
        out[1 if len(calls) == 1 else 0] = 1
        return out
    out = psa_seed_labels(np.zeros((2, 2, 3), np.uint8), np.full((1, 2, 2), 0.5, np.float32), np.array([7]), crf=crf)
    assert out.tolist() == [[0, 0], [0, 0]]


def test_irn_seed_labels_with_the_real_crf_keeps_a_clean_square():
    image = np.zeros((24, 24, 3), np.uint8)
    image[6:18, 6:18] = 200
    scores = np.zeros((1, 24, 24), np.float32)
    scores[0, 7:17, 7:17] = 0.9
    out = irn_seed_labels(image, scores, np.array([3]))
    assert (out[8:16, 8:16] == 3).all() and (out[:3, :3] == 0).all()


def test_seed_labels_refuse_bad_keys():
    with pytest.raises(ConfigError, match="keys"):
        irn_seed_labels(np.zeros((6, 6, 3), np.uint8), SCORES_6x6, np.array([0]), crf=_identity_crf)
    with pytest.raises(ConfigError, match="one key per class"):
        psa_seed_labels(np.zeros((6, 6, 3), np.uint8), SCORES_6x6, np.array([1, 2]), crf=_identity_crf)
