"""Tests of the pixel-to-prototype contrast add-on (tagseg.addons.ppc)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tagseg.addons.ppc import (
    PPCConfig,
    PPCProjector,
    intra_view_loss,
    make_ppc_view2,
    ppc_class_scores,
    ppc_loss,
    ppc_prototypes,
    ppc_pseudo_labels,
    prototype_nce,
    semi_hard_negative_mask,
)
from tagseg.errors import ConfigError, TagsegError

# ----------------------------------------------------------------- plain-loop reference


def _ref_scores(cam: torch.Tensor, labels: torch.Tensor, bg: float) -> list:
    """scores[b][k][i][j] as Python floats (foreground-only CAMs)."""
    b_n, c_n, h, w = cam.shape
    out = []
    for b in range(b_n):
        maps = [[[bg] * w for _ in range(h)]]
        for c in range(c_n):
            vals = [[max(0.0, float(cam[b, c, i, j].detach())) for j in range(w)] for i in range(h)]
            mx = max(max(row) for row in vals)
            mx = max(mx, 1e-5)
            present = float(labels[b, c + 1]) > 0
            maps.append([[(vals[i][j] / mx if present else 0.0) for j in range(w)] for i in range(h)])
        out.append(maps)
    return out


def _ref_pseudo(scores: list) -> list:
    return [
        [[max(range(len(sb)), key=lambda k: (sb[k][i][j], -k)) for j in range(len(sb[0][0]))] for i in range(len(sb[0]))]
        for sb in scores
    ]


def _ref_prototypes(v: torch.Tensor, scores: list, pseudo: list, top_k: int) -> dict:
    """{class: unit prototype (list of floats)} from pixels labelled with the class."""
    b_n, d, h, w = v.shape
    k_n = len(scores[0])
    protos = {}
    for c in range(k_n):
        pix = [(b, i, j) for b in range(b_n) for i in range(h) for j in range(w) if pseudo[b][i][j] == c]
        if not pix:
            continue
        if c == 0:
            key = lambda p: 1.0 - max(scores[p[0]][k][p[1]][p[2]] for k in range(1, k_n))  # noqa: E731
        else:
            key = lambda p, c=c: scores[p[0]][c][p[1]][p[2]]  # noqa: E731
        top = sorted(pix, key=key, reverse=True)[:top_k]
        num = [0.0] * d
        den = 0.0
        for b, i, j in top:
            wgt = scores[b][c][i][j]
            den += wgt
            for e in range(d):
                num[e] += wgt * float(v[b, e, i, j])
        vec = [x / den for x in num]
        norm = math.sqrt(sum(x * x for x in vec))
        protos[c] = [x / norm for x in vec]
    return protos


def _ref_pixel_loss(vec: torch.Tensor, y: int, protos: dict, tau: float) -> torch.Tensor | None:
    if y not in protos:
        return None
    logits = {c: sum(vec[e] * p[e] for e in range(len(p))) / tau for c, p in protos.items()}
    denom = sum(torch.exp(x) for x in logits.values())
    return -torch.log(torch.exp(logits[y]) / denom)


def _ref_ppc_full(v1, cam1, v2, cam2, labels, cfg):
    """PPC with all negatives and all pixels (no mining), views of the same size."""
    u1, u2 = F.normalize(v1, dim=1), F.normalize(v2, dim=1)
    s1, s2 = _ref_scores(cam1, labels, cfg.bg_score), _ref_scores(cam2, labels, cfg.bg_score)
    y1, y2 = _ref_pseudo(s1), _ref_pseudo(s2)
    p1 = _ref_prototypes(u1.detach(), s1, y1, cfg.top_k)
    p2 = _ref_prototypes(u2.detach(), s2, y2, cfg.top_k)
    b_n, _, h, w = v1.shape
    tau = cfg.temperature

    def mean_over_pixels(u, labels_map, protos):
        terms = []
        for b in range(b_n):
            for i in range(h):
                for j in range(w):
                    t = _ref_pixel_loss(u[b, :, i, j], labels_map[b][i][j], protos, tau)
                    if t is not None:
                        terms.append(t)
        return sum(terms) / len(terms) if terms else None

    def intra(u, labels_map, protos):
        per_class = {}
        for b in range(b_n):
            for i in range(h):
                for j in range(w):
                    t = _ref_pixel_loss(u[b, :, i, j], labels_map[b][i][j], protos, tau)
                    if t is not None:
                        per_class.setdefault(labels_map[b][i][j], []).append(t)
        means = [sum(ts) / len(ts) for ts in per_class.values()]
        return sum(means) / len(means)

    def avg(a, b):
        vals = [x for x in (a, b) if x is not None]
        return sum(vals) / len(vals)

    cross_proto = avg(mean_over_pixels(u1, y1, p2), mean_over_pixels(u2, y2, p1))
    cross_cam = avg(mean_over_pixels(u1, y2, p1), mean_over_pixels(u2, y1, p2))
    intra_l = (intra(u1, y1, p1) + intra(u2, y2, p2)) / 2
    return cfg.cross_weight * (cross_proto + cross_cam) + cfg.intra_weight * intra_l, cross_proto, cross_cam, intra_l


# ----------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_k": 0},
        {"temperature": 0.0},
        {"temperature": -0.1},
        {"cross_weight": -1.0},
        {"intra_weight": -0.5},
        {"proj_dim": 0},
        {"view2_size": 0},
        {"bg_score": 1.5},
        {"hard_negative_fraction": 0.0},
        {"negative_keep_fraction": 1.2},
        {"hard_pixel_fraction": -0.1},
        {"negative_selection": "hardest"},
        {"max_pixels_per_class": 0},
    ],
)
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ConfigError):
        PPCConfig(**kwargs)


def test_config_defaults_follow_spec():
    cfg = PPCConfig()
    assert (cfg.proj_dim, cfg.view2_size, cfg.bg_score, cfg.top_k, cfg.temperature) == (128, 128, 0.2, 32, 0.1)
    assert (cfg.cross_weight, cfg.intra_weight) == (0.1, 0.1)
    assert (cfg.hard_negative_fraction, cfg.negative_keep_fraction) == (0.6, 0.5)


def test_projector_conv_relu_then_l2():
    torch.manual_seed(0)
    proj = PPCProjector(6, dim=5)
    x = torch.randn(2, 6, 3, 4)
    out = proj(x)
    assert out.shape == (2, 5, 3, 4)
    expected = F.relu(F.conv2d(x, proj.conv.weight))
    expected = expected / expected.norm(dim=1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(out, expected)
    norms = out.norm(dim=1)
    nonzero = expected.abs().sum(dim=1) > 0
    torch.testing.assert_close(norms[nonzero], torch.ones_like(norms[nonzero]))
    assert (out >= 0).all()


def test_make_view2_size_and_constant_image():
    img = torch.full((2, 3, 64, 48), 0.3)
    out = make_ppc_view2(img, 128)
    assert out.shape == (2, 3, 128, 128)
    torch.testing.assert_close(out, torch.full_like(out, 0.3))
    assert make_ppc_view2(torch.rand(1, 3, 448, 448)).shape == (1, 3, 128, 128)


def test_class_scores_and_pseudo_labels_by_hand():
    # one image, two foreground classes, 1x3 map; class 2 absent.
    cam = torch.tensor([[[[1.0, 2.0, -1.0]], [[4.0, 0.0, 2.0]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    s = ppc_class_scores(cam, labels, has_background=False, bg_score=0.2)
    expected = torch.tensor([[[[0.2, 0.2, 0.2]], [[0.5, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]])
    torch.testing.assert_close(s, expected)
    assert ppc_pseudo_labels(s).tolist() == [[[1, 1, 0]]]


def test_class_scores_with_background_maps():
    z = torch.tensor([[[[0.6, 0.2]], [[0.3, 0.1]], [[0.1, 0.7]]]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    s = ppc_class_scores(z, labels, has_background=True)
    torch.testing.assert_close(s, torch.tensor([[[[1.0, 1 / 3]], [[1.0, 1 / 3]], [[0.0, 0.0]]]]))


def test_class_scores_reject_wrong_channel_count():
    with pytest.raises(TagsegError, match="channels"):
        ppc_class_scores(torch.rand(1, 3, 2, 2), torch.ones(1, 3), has_background=False)


def test_prototypes_by_hand():
    # 1 image, 1x4 map, D=2; pixels 0..2 labelled class 1 with scores 0.9, 0.5, 0.3; pixel 3 background.
    v = torch.tensor([[[[1.0, 0.0, 0.6, 0.0]], [[0.0, 1.0, 0.8, 1.0]]]])
    scores = torch.tensor([[[[0.2, 0.2, 0.2, 0.2]], [[0.9, 0.5, 0.3, 0.1]]]])
    pseudo = torch.tensor([[[1, 1, 1, 0]]])
    protos, valid = ppc_prototypes(v, scores, pseudo, top_k=2)
    assert valid.tolist() == [True, True]
    # class 1: top-2 are pixels 0 (w 0.9) and 1 (w 0.5): (0.9, 0.5) / 1.4 -> normalised
    n = math.hypot(0.9, 0.5)
    torch.testing.assert_close(protos[1], torch.tensor([0.9 / n, 0.5 / n]))
    torch.testing.assert_close(protos[0], torch.tensor([0.0, 1.0]))
    assert not protos.requires_grad


def test_prototypes_mark_classes_without_pixels_invalid():
    v = F.normalize(torch.rand(1, 3, 2, 2), dim=1)
    scores = torch.rand(1, 4, 2, 2)
    pseudo = torch.tensor([[[0, 2], [2, 0]]])
    protos, valid = ppc_prototypes(v, scores, pseudo, top_k=32)
    assert valid.tolist() == [True, False, True, False]
    assert protos[1].abs().sum() == 0 and protos[3].abs().sum() == 0


def test_prototype_nce_matches_plain_formula():
    torch.manual_seed(1)
    v = F.normalize(torch.randn(5, 4), dim=1)
    protos = F.normalize(torch.randn(3, 4), dim=1)
    valid = torch.tensor([True, False, True])
    y = torch.tensor([0, 2, 1, 2, 0])
    out = prototype_nce(v, y, protos, valid, 0.1)
    expected = []
    for i in range(5):
        if not valid[y[i]]:
            continue
        logits = {c: float(v[i] @ protos[c]) / 0.1 for c in (0, 2)}
        expected.append(-math.log(math.exp(logits[int(y[i])]) / sum(math.exp(x) for x in logits.values())))
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_semi_hard_negative_mask_by_hand():
    sims = torch.tensor([[0.5, 0.9, 0.8, 0.7, 0.1, 0.0]])
    y = torch.tensor([0])
    valid = torch.ones(6, dtype=torch.bool)
    # 5 negatives -> pool ceil(0.6*5)=3 = classes {1,2,3}; keep ceil(0.5*3)=2
    less_hard = semi_hard_negative_mask(sims, y, valid, PPCConfig(negative_selection="less_hard"))
    assert less_hard[0].nonzero().flatten().tolist() == [2, 3]
    seen = set()
    for seed in range(30):
        m = semi_hard_negative_mask(sims, y, valid, PPCConfig(), torch.Generator().manual_seed(seed))
        chosen = tuple(m[0].nonzero().flatten().tolist())
        assert len(chosen) == 2 and set(chosen) <= {1, 2, 3}
        seen.add(chosen)
    assert len(seen) == 3  # the random half varies over the whole pool
    # invalid prototypes are never negatives
    valid2 = torch.tensor([True, False, False, True, True, True])
    m = semi_hard_negative_mask(sims, y, valid2, PPCConfig(negative_selection="less_hard"))
    # negatives {3,4,5}: pool ceil(1.8)=2 -> {3,4}; keep 1 -> the less hard one, 4
    assert m[0].nonzero().flatten().tolist() == [4]


def test_intra_hard_pixel_sampling_by_hand():
    # two prototypes (so the single negative is always used); class 0 has 4 pixels.
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    valid = torch.tensor([True, True])
    angles = torch.tensor([0.1, 0.5, 0.9, 1.2])
    v = torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    y = torch.zeros(4, dtype=torch.long)
    tau = 0.1
    per_pixel = [
        -math.log(math.exp(math.cos(a) / tau) / (math.exp(math.cos(a) / tau) + math.exp(math.sin(a) / tau)))
        for a in angles.tolist()
    ]
    # hardest two = least similar to prototype 0 = pixels 2 and 3
    allowed = {
        round((per_pixel[i] + per_pixel[j] + per_pixel[2] + per_pixel[3]) / 4, 5)
        for i, j in itertools.combinations(range(4), 2)
    }
    cfg = PPCConfig(temperature=tau)
    seen = set()
    for seed in range(20):
        out = intra_view_loss(v, y, protos, valid, cfg, torch.Generator().manual_seed(seed))
        key = round(float(out), 5)
        assert key in allowed
        seen.add(key)
    assert len(seen) > 1
    # all-hard sampling = plain mean
    out = intra_view_loss(v, y, protos, valid, PPCConfig(temperature=tau, hard_pixel_fraction=1.0))
    assert float(out) == pytest.approx(sum(per_pixel) / 4, rel=1e-5)


def _toy_views(seed: int = 0, size: int = 4):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    v1 = torch.randn(2, 6, size, size, generator=g).requires_grad_(True)
    v2 = torch.randn(2, 6, size, size, generator=g).requires_grad_(True)
    cam1 = (torch.rand(2, 3, size, size, generator=g) + 0.05).requires_grad_(True)
    cam2 = (torch.rand(2, 3, size, size, generator=g) + 0.05).requires_grad_(True)
    return v1, cam1, v2, cam2, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppc_loss_matches_plain_loop_reference(seed):
    v1, cam1, v2, cam2, labels = _toy_views(seed)
    cfg = PPCConfig(formulation="paper", top_k=3, hard_negative_fraction=1.0, negative_keep_fraction=1.0, hard_pixel_fraction=1.0)
    loss, parts = ppc_loss(v1, cam1, v2, cam2, labels, cfg)
    loss.backward()
    g1, g2 = v1.grad.clone(), v2.grad.clone()
    v1.grad = v2.grad = None
    ref, ref_cp, ref_cc, ref_intra = _ref_ppc_full(v1, cam1, v2, cam2, labels, cfg)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert float(parts["cross_prototype"]) == pytest.approx(ref_cp.item(), rel=1e-5)
    assert float(parts["cross_cam"]) == pytest.approx(ref_cc.item(), rel=1e-5)
    assert float(parts["intra"]) == pytest.approx(ref_intra.item(), rel=1e-5)
    torch.testing.assert_close(g1, v1.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g2, v2.grad, rtol=1e-4, atol=1e-6)


def test_ppc_gradient_only_through_embeddings():
    v1, cam1, v2, cam2, labels = _toy_views(3)
    loss, _ = ppc_loss(v1, cam1, v2, cam2, labels, PPCConfig(top_k=4), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert cam1.grad is None and cam2.grad is None
    assert v1.grad.abs().sum() > 0 and v2.grad.abs().sum() > 0


def test_ppc_loss_with_views_of_different_sizes():
    g = torch.Generator().manual_seed(5)
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]])
    v1 = torch.randn(2, 8, 12, 12, generator=g, requires_grad=True)
    cam1 = torch.randn(2, 3, 12, 12, generator=g)
    v2 = torch.randn(2, 8, 4, 4, generator=g, requires_grad=True)
    cam2 = torch.randn(2, 3, 4, 4, generator=g)
    loss, parts = ppc_loss(v1, cam1, v2, cam2, labels, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    expected = 0.1 * (parts["cross_prototype"] + parts["cross_cam"]) + 0.1 * parts["intra"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(v1.grad).all() and torch.isfinite(v2.grad).all()


def test_ppc_loss_patch_family_maps():
    g = torch.Generator().manual_seed(6)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    z = torch.softmax(torch.randn(1, 3, 5, 5, generator=g), dim=1)
    v = torch.randn(1, 4, 5, 5, generator=g, requires_grad=True)
    loss, _ = ppc_loss(v, z, v, z, labels, has_background=True, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    with pytest.raises(TagsegError):
        ppc_loss(v, z, v, z, labels, has_background=False)


def test_ppc_loss_rejects_mismatched_sizes():
    v = torch.randn(1, 4, 5, 5)
    cam = torch.randn(1, 2, 4, 4)
    with pytest.raises(TagsegError, match="spatial"):
        ppc_loss(v, cam, v, cam, torch.ones(1, 3))


# ----------------------------------------------------------------- official formulation (hand values)

from tagseg.addons.ppc import (  # noqa: E402
    ppc_official_intra,
    ppc_official_prototypes,
    ppc_official_pseudo_labels,
    ppc_official_scores,
)


def test_official_scores_use_the_codes_min_max_arithmetic():
    cam = torch.tensor([[[[0.0, 1.0, 3.0]]]])  # one image, one foreground class, 1x3
    s = ppc_official_scores(cam, torch.tensor([[1.0, 0.0]]), has_background=False, bg_score=0.2)
    expected = [-1e-5 / 3.00001, (1 - 1e-5) / 3.00001, (3 - 1e-5) / 3.00001]
    assert s[0, 1, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(s[0, 0], torch.full((1, 3), 0.2))  # constant background
    # the absent class keeps its scores (prototypes use them) but cannot be a pseudo label
    assert ppc_official_pseudo_labels(s, torch.tensor([[1.0, 0.0]])).tolist() == [[[0, 0, 0]]]
    assert ppc_official_pseudo_labels(s, torch.tensor([[1.0, 1.0]])).tolist() == [[[0, 1, 1]]]


def test_official_prototypes_take_the_top_pixels_whatever_their_label():
    v = torch.tensor([[[[1.0, 0.0, 0.0, 3.0]], [[0.0, 1.0, 2.0, 4.0]]]])  # (1, D=2, 1, 4)
    scores = torch.tensor([[[[0.2, 0.2, 0.2, 0.2]], [[0.9, 0.1, 0.5, 0.7]]]])  # (1, K=2, 1, 4)
    p = ppc_official_prototypes(v, scores, top_k=2)
    mean = (0.9 * torch.tensor([1.0, 0.0]) + 0.7 * torch.tensor([3.0, 4.0])) / 1.6
    torch.testing.assert_close(p[1], mean / mean.norm())
    assert p[1].norm().item() == pytest.approx(1.0)


def test_official_intra_drops_the_hardest_negatives_and_keeps_the_positive_in_the_ranking():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    y = torch.tensor([0, 0])
    cfg = PPCConfig(temperature=0.5)
    loss = ppc_official_intra(f, y, protos, cfg, lambda n, k: torch.tensor([0]), drop_hardest=1, n_negatives=2)
    # pixel a: ranking p0 > p3 > p1 > p2, drop p0 -> negatives p3, p1
    pa = math.log(math.exp(2.0) + math.exp(1.2) + math.exp(0.0)) - 2.0
    # pixel b: ranking p3 > p1 > p0 > p2, drop p3 -> negatives p1, p0 (its own prototype again)
    pb = math.log(math.exp(1.2) + math.exp(1.6) + math.exp(1.2)) - 1.2
    # n = 2: one random pixel (a, from the sampler) and the least similar one (b)
    assert loss.item() == pytest.approx((pa + pb) / 2, rel=1e-6)


def test_official_formulation_is_the_default_and_paper_is_a_key():
    assert PPCConfig().formulation == "official"
    with pytest.raises(ConfigError, match="formulation"):
        PPCConfig(formulation="other")
