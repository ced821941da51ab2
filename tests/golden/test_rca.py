"""RCA's region mixup contrast and bank update against the official code (maeve07/RCA): golden
values recorded by benchmarks/golden/record_rca.py."""

from __future__ import annotations

import torch

from tagseg.addons.rca import RCAAggregation, RCAConfig, RegionMemoryBank, region_embeddings, region_mixup_loss

from .conftest import assert_rel_close, assert_summary_close, case_tensors, golden_case, load_golden
from .inputs import generate

GOLDEN = load_golden("rca")


def _labels_with_background(fg: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones(fg.shape[0], 1), fg], dim=1)


def _bank_from_queues(queues: torch.Tensor, **kwargs) -> RegionMemoryBank:
    n_cls, cap, dim = queues.shape
    bank = RegionMemoryBank(n_cls, dim, capacity=cap, **kwargs)
    with torch.no_grad():
        bank.memory.copy_(queues)
        bank.sizes.fill_(cap)
    return bank


def test_golden_file_pins_the_official_commit():
    assert GOLDEN["source"]["repo"] == "maeve07/RCA"
    assert GOLDEN["source"]["commit"].startswith("d410a96")


def test_region_mixup_contrast_matches_official():
    case = golden_case("rca", "region_mixup_seed0")
    x = case_tensors(case)
    mid = x["mid"].clone().requires_grad_(True)
    labels = _labels_with_background(x["label"])
    regions = region_embeddings(mid, x["map_coarse"], labels, mask_mode="softmax")
    # replay the official draws: region r = (image i, its j-th label) mixes with image mix_perm[i]'s
    # label number label_perm[0], with weight lam
    rows = {(int(b), int(c)): r for r, (b, c) in enumerate(zip(regions.batch_index, regions.channels))}
    partners, omega = [], []
    for r, draw in enumerate(case["mixup_draws"]):
        i = int(regions.batch_index[r])
        partner_image = draw["mix_perm"][i]
        partner_labels = x["label"][partner_image].nonzero(as_tuple=True)[0].tolist()
        partners.append(rows[(partner_image, partner_labels[draw["label_perm"][0]])])
        omega.append(draw["lam"])
    bank = _bank_from_queues(x["queues"])
    loss = region_mixup_loss(regions, bank, case["params"]["temperature"], omega=torch.tensor(omega),
                             partners=torch.tensor(partners), reduction="sum_images")
    assert_rel_close(loss, case["outputs"]["loss_cl_mixup"], what="L_RM")
    loss.backward()
    assert_summary_close(mid.grad, case["grads"]["mid"], what="grad mid")


def test_sum_over_images_is_about_batch_size_times_the_mean():
    """R7: the former mean over regions is B-times weaker when each image holds one region."""
    case = golden_case("rca", "region_mixup_seed0")
    x = case_tensors(case)
    labels = _labels_with_background(x["label"])
    regions = region_embeddings(x["mid"], x["map_coarse"], labels, mask_mode="softmax")
    bank = _bank_from_queues(x["queues"])
    omega = torch.full((regions.channels.shape[0],), 0.5)
    partners = torch.arange(regions.channels.shape[0])  # each region with itself: no mixing
    summed = region_mixup_loss(regions, bank, 0.07, omega=omega, partners=partners, reduction="sum_images")
    mean = region_mixup_loss(regions, bank, 0.07, omega=omega, partners=partners)  # mean over all regions
    assert int(regions.batch_index.max()) + 1 == 3
    assert summed.item() > 2.0 * mean.item()  # 3 images: the sum is about 3x the mean
    assert RCAConfig().rm_reduction == "sum_images"


def test_official_bank_update_matches():
    case = golden_case("rca", "bank_update_one_class_per_image")
    x = case_tensors(case)
    p = case["params"]
    bank = _bank_from_queues(x["queues"], momentum=p["momentum"], score_threshold=p["score_threshold"],
                             update_mode="official")
    labels = _labels_with_background(x["label"])
    for j in range(labels.shape[0]):  # the official code updates image by image
        regions = region_embeddings(x["x"][j:j + 1], x["map_coarse"][j:j + 1], labels[j:j + 1], mask_mode="softmax")
        scores = x["probs"][j][regions.channels]
        bank.update(regions.embeddings, regions.channels, torch.full_like(regions.channels, j), scores)
    assert_rel_close(bank.memory, case["outputs"]["queues"], what="queues")
    assert bank.heads.tolist() == case["outputs"]["queue_ptr"]


def test_official_aggregation_matches():
    """The code's learned, softmax-free aggregation (``addons.rca.aggregation=official``)."""
    case = golden_case("rca", "aggregation_official")
    x = case_tensors(case)
    agg = RCAAggregation(16, 20, prototypes_per_class=10, mode="official")
    official_names = {"Q": agg.q, "K": agg.k, "V": agg.v, "aggre": agg.aggre, "concat_project": agg.project}
    with torch.no_grad():
        for name, module in official_names.items():
            module.weight.copy_(x[f"{name}.weight"])
            module.bias.copy_(x[f"{name}.bias"])
        agg.prototypes.copy_(x["feat_cluter"])  # class-major, 10 centres per class, as the official buffers
        agg.prototype_valid.fill_(True)
    feats = x["x"].clone().requires_grad_(True)
    out = agg.aggregate(feats)
    assert_summary_close(out, case["outputs"]["x_out"], what="aggregated features")
    probe = torch.from_numpy(generate({"seed": case["outputs"]["probe_seed"], "shape": list(out.shape),
                                       "dist": "normal"}))
    (out * probe).sum().backward()
    assert_summary_close(feats.grad, case["grads"]["x"], what="grad x")
    assert_summary_close(agg.q.weight.grad, case["grads"]["Q.weight"], what="grad Q")
    assert_summary_close(agg.k.weight.grad, case["grads"]["K.weight"], what="grad K")
    assert agg(feats).shape == (2, 20, 8, 8)
    assert RCAConfig().aggregation == "paper"  # the paper's softmax aggregation stays the default
