"""Tests of the regional semantic contrast and aggregation add-on (tagseg.addons.rca)."""

from __future__ import annotations

import math

import pytest
import torch

from tagseg.addons.rca import (
    RCAAggregation,
    RCAConfig,
    RegionBatch,
    RegionMemoryBank,
    gap_multilabel_loss,
    kmeans,
    rca_total_loss,
    region_embeddings,
    region_masks,
    region_mixup_loss,
    region_nce,
)
from tagseg.errors import ConfigError, TagsegError


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"score_threshold": 1.5},
        {"temperature": 0.0},
        {"mixup_alpha": 0.0},
        {"prototypes_per_class": 0},
        {"kmeans_iters": 0},
        {"aux_weight": -0.4},
        {"contrast_weight": -1.0},
        {"contrast_start_epoch": -1},
    ],
)
def test_config_rejects_nonsense(kwargs):
    with pytest.raises(ConfigError):
        RCAConfig(**kwargs)


def test_bank_and_aggregation_reject_bad_sizes():
    with pytest.raises(ConfigError):
        RegionMemoryBank(3, 4, capacity=0)
    with pytest.raises(ConfigError):
        RegionMemoryBank(0, 4)
    with pytest.raises(ConfigError):
        RCAAggregation(4, 3, prototypes_per_class=0)
    with pytest.raises(ConfigError):
        kmeans(torch.rand(5, 2), 0)


# ----------------------------------------------------------------- region embeddings


def test_region_embedding_by_hand():
    feats = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[10.0, 0.0], [0.0, 10.0]]]])  # (1, 2, 2, 2)
    cams = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[5.0, 5.0], [5.0, 5.0]], [[9.0, 0.0], [0.0, 0.0]]]])
    labels = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # classes 1, 2 present (channels 0, 1); channel 2 absent
    rb = region_embeddings(feats, cams, labels)
    assert rb.channels.tolist() == [0, 1] and rb.batch_index.tolist() == [0, 0]
    # channel 0: mean 1.5 -> cells 3, 4 -> (3.5, 5.0); channel 1 constant -> all cells -> (2.5, 5.0)
    torch.testing.assert_close(rb.embeddings, torch.tensor([[3.5, 5.0], [2.5, 5.0]]))
    masks = region_masks(cams)
    assert masks[0, 2].tolist() == [[1.0, 0.0], [0.0, 0.0]]


def test_region_embedding_with_background_channel_and_gradient():
    feats = torch.rand(2, 3, 4, 4, requires_grad=True)
    cams = torch.rand(2, 3, 4, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    rb = region_embeddings(feats, cams, labels, has_background=True)
    assert rb.channels.tolist() == [0, 2, 0, 1] and rb.batch_index.tolist() == [0, 0, 1, 1]
    rb.embeddings.sum().backward()
    assert feats.grad.abs().sum() > 0 and cams.grad is None


def test_region_embedding_rejects_mismatch():
    with pytest.raises(TagsegError):
        region_embeddings(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 5, 5), torch.ones(1, 3))


# ----------------------------------------------------------------- memory bank


def test_bank_append_momentum_and_threshold():
    bank = RegionMemoryBank(num_classes=2, dim=2, capacity=4, momentum=0.9, score_threshold=0.7)
    f1 = torch.tensor([[1.0, 0.0]])
    assert bank.update(f1, torch.tensor([0]), torch.tensor([7]), torch.tensor([0.8])) == 1
    torch.testing.assert_close(bank.entries(0), f1)
    # same image, same class: m <- 0.9 m + 0.1 f
    assert bank.update(torch.tensor([[0.0, 1.0]]), torch.tensor([0]), torch.tensor([7]), torch.tensor([0.95])) == 1
    torch.testing.assert_close(bank.entries(0), torch.tensor([[0.9, 0.1]]))
    # score at (not above) the threshold and below it: ignored
    assert bank.update(torch.ones(2, 2), torch.tensor([0, 1]), torch.tensor([8, 9]), torch.tensor([0.7, 0.2])) == 0
    assert bank.entries(0).shape[0] == 1 and bank.entries(1).shape[0] == 0
    # same image id but another class: its own slot
    bank.update(torch.tensor([[2.0, 2.0]]), torch.tensor([1]), torch.tensor([7]), torch.tensor([0.9]))
    torch.testing.assert_close(bank.entries(1), torch.tensor([[2.0, 2.0]]))
    mem, cls = bank.all_entries()
    assert cls.tolist() == [0, 1] and mem.shape == (2, 2)


def test_bank_fifo_cap_ignores_momentum_refresh():
    bank = RegionMemoryBank(num_classes=1, dim=1, capacity=3, momentum=0.5, score_threshold=0.0)
    one = torch.ones(1)
    for img in (0, 1, 2):
        bank.update(torch.tensor([[float(img)]]), torch.tensor([0]), torch.tensor([img]), one)
    bank.update(torch.tensor([[3.0]]), torch.tensor([0]), torch.tensor([3]), one)  # evicts image 0
    assert sorted(bank.keys[0].tolist()) == [1, 2, 3]
    bank.update(torch.tensor([[11.0]]), torch.tensor([0]), torch.tensor([1]), one)  # momentum on image 1
    assert bank.entries(0)[bank.keys[0].tolist().index(1)].item() == pytest.approx(0.5 * 1 + 0.5 * 11)
    bank.update(torch.tensor([[4.0]]), torch.tensor([0]), torch.tensor([4]), one)  # evicts image 1 (oldest)
    assert sorted(bank.keys[0].tolist()) == [2, 3, 4]
    assert int(bank.sizes[0]) == 3


def test_bank_state_dict_round_trip():
    bank = RegionMemoryBank(num_classes=3, dim=4, capacity=5)
    g = torch.Generator().manual_seed(0)
    bank.update(torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6), torch.ones(6))
    state = bank.state_dict()
    assert set(state) == {"memory", "keys", "sizes", "heads"}
    fresh = RegionMemoryBank(num_classes=3, dim=4, capacity=5)
    fresh.load_state_dict(state)
    for c in range(3):
        torch.testing.assert_close(fresh.entries(c), bank.entries(c))
    fresh.update(torch.zeros(1, 4), torch.tensor([0]), torch.tensor([0]), torch.ones(1))  # momentum, not append
    assert fresh.entries(0).shape[0] == 2


def test_bank_release_and_loading_released_or_full_states():
    bank = RegionMemoryBank(num_classes=3, dim=4, capacity=5)
    bank.update(torch.ones(2, 4), torch.tensor([0, 2]), torch.tensor([7, 8]), torch.ones(2))
    full = {k: v.clone() for k, v in bank.state_dict().items()}
    bank.release()
    assert bank.released and bank.memory.shape == (3, 0, 4) and bank.keys.shape == (3, 0)
    assert int(bank.sizes.sum()) == 0 and bank.all_entries()[0].shape == (0, 4)
    released = bank.state_dict()
    # a full-size bank loading a released state becomes released (no storage kept for inference)
    other = RegionMemoryBank(num_classes=3, dim=4, capacity=5)
    other.load_state_dict(released)
    assert other.released
    # a released bank loading a full state gets its storage and entries back
    other.load_state_dict(full)
    assert not other.released and other.entries(2).tolist() == [[1.0] * 4] and other.keys[2, 0] == 8
    # a wrong capacity is an error, not a silent reshape
    with pytest.raises(RuntimeError, match="capacity 4"):
        RegionMemoryBank(num_classes=3, dim=4, capacity=4).load_state_dict(full)
    # updating a released bank starts it again, empty
    bank.update(torch.zeros(1, 4), torch.tensor([1]), torch.tensor([3]), torch.ones(1))
    assert not bank.released and bank.memory.shape == (3, 5, 4) and bank.sizes.tolist() == [0, 1, 0]


def test_bank_rejects_bad_update():
    bank = RegionMemoryBank(num_classes=2, dim=3)
    with pytest.raises(TagsegError):
        bank.update(torch.zeros(1, 4), torch.tensor([0]), torch.tensor([0]), torch.ones(1))
    with pytest.raises(TagsegError):
        bank.update(torch.zeros(1, 3), torch.tensor([5]), torch.tensor([0]), torch.ones(1))
    with pytest.raises(TagsegError):
        bank.update(torch.zeros(1, 3), torch.tensor([0]), torch.tensor([-2]), torch.ones(1))


# ----------------------------------------------------------------- contrast


def _plain_nce(q, cls, memory, mem_cls, tau):
    qn = [x / math.sqrt(sum(y * y for y in q)) for x in q] if any(q) else q
    sims = []
    for m in memory:
        mn = math.sqrt(sum(y * y for y in m))
        sims.append(sum(a * b / mn for a, b in zip(qn, m)) / tau)
    pos = [s for s, c in zip(sims, mem_cls) if c == cls]
    neg = [s for s, c in zip(sims, mem_cls) if c != cls]
    if not pos:
        return None
    terms = [-math.log(math.exp(p) / (math.exp(p) + sum(math.exp(n) for n in neg))) for p in pos]
    return sum(terms) / len(terms)


def test_region_nce_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 3, generator=g)
    mem = torch.randn(6, 3, generator=g)
    mem_cls = torch.tensor([0, 0, 1, 2, 2, 2])
    cls = torch.tensor([0, 2, 1, 3])
    losses, ok = region_nce(q, cls, mem, mem_cls, 0.5)
    assert ok.tolist() == [True, True, True, False]
    for i in range(3):
        expected = _plain_nce(q[i].tolist(), int(cls[i]), mem.tolist(), mem_cls.tolist(), 0.5)
        assert losses[i].item() == pytest.approx(expected, rel=1e-5)
    assert losses[3].item() == 0.0


def test_region_mixup_loss_by_hand_and_memory_stop_gradient():
    bank = RegionMemoryBank(num_classes=3, dim=2, capacity=4, score_threshold=0.0)
    mem = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]])
    bank.update(mem, torch.tensor([0, 0, 1, 2]), torch.arange(4), torch.ones(4))
    emb = torch.tensor([[2.0, 0.5], [0.3, 1.0]], requires_grad=True)
    regions = RegionBatch(emb, torch.tensor([0, 1]), torch.tensor([0, 0]))
    omega = torch.tensor([0.6, 0.45])
    loss = region_mixup_loss(regions, bank, temperature=0.07, omega=omega)
    e = emb.detach().tolist()
    expected = []
    for i, (w, j) in enumerate(((0.6, 1), (0.45, 0))):  # each region's only partner is the other one
        mixed = [w * a + (1 - w) * b for a, b in zip(e[i], e[j])]
        own = _plain_nce(mixed, i, mem.tolist(), [0, 0, 1, 2], 0.07)
        other = _plain_nce(mixed, j, mem.tolist(), [0, 0, 1, 2], 0.07)
        expected.append(w * own + (1 - w) * other)
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)
    loss.backward()
    assert emb.grad.abs().sum() > 0
    assert not bank.memory.requires_grad and bank.memory.grad is None
    # a memory tensor that requires grad is still used under stop-gradient
    leaf = mem.clone().requires_grad_(True)
    losses, _ = region_nce(emb, torch.tensor([0, 1]), leaf, torch.tensor([0, 0, 1, 2]), 0.07)
    losses.sum().backward()
    assert leaf.grad is None


def test_region_mixup_falls_back_to_memory_partner_and_empty_bank():
    bank = RegionMemoryBank(num_classes=2, dim=2, capacity=4, score_threshold=0.0)
    emb = torch.tensor([[1.0, 0.2]], requires_grad=True)
    regions = RegionBatch(emb, torch.tensor([0]), torch.tensor([0]))
    empty = region_mixup_loss(regions, bank)
    assert empty.item() == 0.0 and empty.requires_grad
    bank.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), torch.arange(2), torch.ones(2))
    loss = region_mixup_loss(regions, bank, temperature=0.1, omega=torch.tensor([0.7]))
    mixed = [0.7 * 1.0 + 0.3 * 0.0, 0.7 * 0.2 + 0.3 * 1.0]  # partner = the only class-1 memory entry
    expected = 0.7 * _plain_nce(mixed, 0, [[1, 0], [0, 1]], [0, 1], 0.1) + 0.3 * _plain_nce(
        mixed, 1, [[1, 0], [0, 1]], [0, 1], 0.1
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------- k-means and aggregation


def test_kmeans_recovers_separable_clusters_deterministically():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    pts = torch.cat([c + 0.3 * torch.randn(25, 3, generator=g) for c in centres])
    pts = pts[torch.randperm(100, generator=g)]
    found = kmeans(pts, 4, iters=50, seed=1)
    assert found.shape == (4, 3)
    dist = torch.cdist(centres, found)
    assert sorted(dist.argmin(dim=1).tolist()) == [0, 1, 2, 3]  # one found centre per true centre
    assert dist.min(dim=1).values.max() < 0.3
    torch.testing.assert_close(kmeans(pts, 4, iters=50, seed=1), found)


def test_kmeans_small_and_degenerate_inputs():
    few = torch.rand(3, 2)
    torch.testing.assert_close(kmeans(few, 10), few)
    same = torch.ones(12, 2)
    out = kmeans(same, 4)
    torch.testing.assert_close(out, torch.ones(4, 2))


def test_aggregation_by_hand():
    agg = RCAAggregation(in_dim=2, num_channels=2, prototypes_per_class=2)
    feats = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2): cells (1, 0) and (0, 2)
    out = agg.aggregate(feats)
    torch.testing.assert_close(out[:, 2:], torch.zeros(1, 2, 1, 2))  # no prototypes yet
    bank = RegionMemoryBank(num_classes=2, dim=2, capacity=5, score_threshold=0.0)
    bank.update(torch.tensor([[1.0, 1.0], [0.0, -1.0]]), torch.tensor([0, 1]), torch.arange(2), torch.ones(2))
    agg.update_prototypes(bank)
    assert agg.prototype_valid.tolist() == [True, False, True, False]
    q = [[1.0, 1.0], [0.0, -1.0]]
    out = agg.aggregate(feats)
    for j, cell in enumerate(([1.0, 0.0], [0.0, 2.0])):
        logits = [sum(a * b for a, b in zip(cell, p)) for p in q]
        z = sum(math.exp(x) for x in logits)
        s = [math.exp(x) / z for x in logits]
        expected = [sum(s[k] * q[k][d] for k in range(2)) for d in range(2)]
        torch.testing.assert_close(out[0, 2:, 0, j], torch.tensor(expected))
        torch.testing.assert_close(out[0, :2, 0, j], torch.tensor(cell))
    cam = agg(feats)
    torch.testing.assert_close(cam, torch.nn.functional.conv2d(out, agg.head.weight))
    state = agg.state_dict()
    assert {"prototypes", "prototype_valid", "head.weight"} <= set(state)
    fresh = RCAAggregation(in_dim=2, num_channels=2, prototypes_per_class=2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(feats), cam)


def test_aggregation_prototypes_from_kmeans_per_class():
    g = torch.Generator().manual_seed(2)
    bank = RegionMemoryBank(num_classes=2, dim=2, capacity=50, score_threshold=0.0)
    a = torch.tensor([5.0, 5.0]) + 0.1 * torch.randn(20, 2, generator=g)
    b = torch.tensor([-5.0, 5.0]) + 0.1 * torch.randn(20, 2, generator=g)
    bank.update(torch.cat([a, b]), torch.tensor([0] * 20 + [1] * 20), torch.arange(40), torch.ones(40))
    agg = RCAAggregation(in_dim=2, num_channels=2, prototypes_per_class=1)
    agg.update_prototypes(bank, iters=10, seed=0)
    torch.testing.assert_close(agg.prototypes, torch.stack([a.mean(0), b.mean(0)]), rtol=0, atol=1e-5)


# ----------------------------------------------------------------- total


def test_total_loss_switches_contrast_on_after_first_epoch():
    o = torch.tensor([[[[1.0, 3.0]], [[-2.0, 0.0]]]])  # GAP: 2, -1
    p = torch.tensor([[[[0.0, 0.0]], [[1.0, 1.0]]]])  # GAP: 0, 1
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    ce_o = (-math.log(sig(2.0)) - math.log(1 - sig(-1.0))) / 2
    ce_p = (-math.log(sig(0.0)) - math.log(1 - sig(1.0))) / 2
    rm = torch.tensor(3.0)
    paper = RCAConfig(contrast_start_epoch=1)  # the paper's start; the default is the official code's 2
    first, parts0 = rca_total_loss(o, p, labels, rm, epoch=0, cfg=paper)
    later, parts1 = rca_total_loss(o, p, labels, rm, epoch=1, cfg=paper)
    assert rca_total_loss(o, p, labels, rm, epoch=1)[1]["rm"].item() == 0.0  # default: still off in epoch 1
    assert rca_total_loss(o, p, labels, rm, epoch=2)[1]["rm"].item() == 3.0
    assert first.item() == pytest.approx(ce_o + 0.4 * ce_p, rel=1e-6)
    assert later.item() == pytest.approx(ce_o + 0.4 * ce_p + 0.01 * 3.0, rel=1e-6)
    assert parts0["rm"].item() == 0.0 and parts1["rm"].item() == 3.0
    assert gap_multilabel_loss(o, labels).item() == pytest.approx(ce_o, rel=1e-6)
    none, _ = rca_total_loss(o, p, labels, None, epoch=5)
    assert none.item() == pytest.approx(ce_o + 0.4 * ce_p, rel=1e-6)


# ----------------------------------------------------------------- official-code fidelity (hand values)


def test_region_masks_softmax_mode_by_hand():
    # two channels over three cells: softmax over channels, then each channel's mask above its mean
    cams = torch.tensor([[[[0.0, 2.0, 0.0]], [[1.0, 0.0, 0.0]]]])
    m = region_masks(cams, "softmax")
    s = torch.softmax(cams, dim=1)  # channel 0: [0.269, 0.881, 0.5], mean 0.55
    assert m[0, 0, 0].tolist() == [0.0, 1.0, 0.0] and m[0, 1, 0].tolist() == (s[0, 1, 0] > s[0, 1, 0].mean()).float().tolist()
    assert m[0, 1, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(ConfigError):
        region_masks(cams, "other")


def test_official_bank_is_a_noise_initialised_ring_with_momentum():
    bank = RegionMemoryBank(2, 3, capacity=2, momentum=0.5, score_threshold=0.7, update_mode="official", init_seed=4)
    noise = bank.memory.clone()
    assert bank.sizes.tolist() == [2, 2]  # noise slots count as entries
    f1, f2, f3 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 4.0, 0.0]), torch.tensor([2.0, 2.0, 2.0])
    ch = torch.tensor([1, 1, 1])
    # the same image twice still moves on along the ring; a score at the threshold is not written
    written = bank.update(torch.stack([f1, f2, f3]), ch, torch.tensor([7, 7, 8]), torch.tensor([0.9, 0.9, 0.7]))
    assert written == 2
    torch.testing.assert_close(bank.memory[1, 0], 0.5 * noise[1, 0] + 0.5 * f1)
    torch.testing.assert_close(bank.memory[1, 1], 0.5 * noise[1, 1] + 0.5 * f2)
    assert bank.heads.tolist() == [0, 0]
    torch.testing.assert_close(bank.memory[0], noise[0])


def test_rm_sum_over_images_by_hand():
    """Two images, regions (img 0: 2, img 1: 1), no mixing: sum of the per-image means."""
    bank = RegionMemoryBank(3, 2, capacity=1)
    with torch.no_grad():
        bank.memory[:, 0] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        bank.sizes.fill_(1)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    regions = RegionBatch(emb, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]))
    same = torch.arange(3)
    losses, _ = region_nce(emb, regions.channels, bank.memory[:, 0], torch.arange(3), 0.5)
    got = region_mixup_loss(regions, bank, 0.5, omega=torch.ones(3), partners=same, reduction="sum_images")
    assert got.item() == pytest.approx((losses[0] + losses[1]).item() / 2 + losses[2].item(), rel=1e-6)
    mean = region_mixup_loss(regions, bank, 0.5, omega=torch.ones(3), partners=same)
    assert mean.item() == pytest.approx(losses.mean().item(), rel=1e-6)


def test_official_aggregation_without_prototypes_and_bad_mode():
    agg = RCAAggregation(4, 3, prototypes_per_class=2, mode="official")
    f = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        expected = agg.project(torch.cat([f, agg.aggre(torch.zeros_like(f))], dim=1))
    torch.testing.assert_close(agg.aggregate(f), expected)
    assert agg(f).shape == (2, 3, 5, 5) and agg.head.in_channels == 4
    with pytest.raises(ConfigError):
        RCAAggregation(4, 3, mode="other")
    with pytest.raises(ConfigError, match="aggregation"):
        RCAConfig(aggregation="other")
