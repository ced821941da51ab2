"""ViT-PCM against numbers recorded from the official TensorFlow code (deepplants/ViT-PCM @ 1fea66f).

``tests/golden/vit_pcm.json`` is written by ``benchmarks/golden/record_vit_pcm.py``; these tests need
only that file: inputs are regenerated from their seeds and checked against the recorded sha256
(the golden conventions of benchmarks/golden/README.md; a small local loader keeps this file standalone).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tagseg.methods.equivariance import equivariance_loss, equivariance_target, mosaic_indices
from tagseg.methods.label_merge import label_merge
from tagseg.methods.losses import l2_penalty, multilabel_ce
from tagseg.methods.pooling import max_pool
from tagseg.models.hv_bilstm import HVBiLSTM

GOLDEN = json.loads((Path(__file__).parent / "vit_pcm.json").read_text())
CASES = {c["name"]: c for c in GOLDEN["cases"]}
RTOL = 1e-5
ATOL = 1e-6


def _checksum(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode() + a.tobytes()).hexdigest()


def regenerate(spec: dict) -> np.ndarray:
    """The recorder's input from its spec (seeded draw or given values), checked against its checksum."""
    if "value" in spec:
        x = np.asarray(spec["value"], dtype=spec.get("dtype", "float32"))
    else:
        rng = np.random.default_rng(int(spec["seed"]))
        shape = tuple(spec["shape"])
        draw = rng.standard_normal(shape) if spec["dist"] == "normal" else rng.random(shape)
        x = (float(spec.get("offset", 0.0)) + float(spec.get("scale", 1.0)) * draw).astype(np.float32)
    assert _checksum(x) == spec["sha256"], "golden input regenerated differently from the recording"
    return x


def t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def close(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual.double(), t(expected), rtol=RTOL, atol=ATOL)


def test_recorded_from_the_pinned_commit():
    assert GOLDEN["source"]["repo"] == "deepplants/ViT-PCM"
    assert GOLDEN["source"]["commit"].startswith("1fea66f")


def test_label_merge_matches_official():
    case = CASES["label_merge"]
    logits = t(regenerate(case["inputs"]["logits"]))  # (B, H, W, K)
    labels = t(regenerate(case["inputs"]["labels"]))
    merged = label_merge(logits.softmax(-1).permute(0, 3, 1, 2), labels).permute(0, 2, 3, 1)
    close(merged, case["outputs"]["merged"])


def test_mce_and_l2_match_official_with_gradients():
    case = CASES["mce_l2"]
    feats = t(regenerate(case["inputs"]["features"])).requires_grad_(True)  # (B, h, w, D)
    kernel = t(regenerate(case["inputs"]["kernel"]))  # (D, K), Keras layout
    weight = kernel.t().contiguous().requires_grad_(True)  # torch Linear layout (K, D)
    labels = t(regenerate(case["inputs"]["labels"]))
    logits = feats @ weight.t()
    pooled = max_pool(logits.softmax(-1).flatten(1, 2))
    mce = multilabel_ce(pooled, labels)
    reg = l2_penalty(weight, 0.01)
    (mce + reg).backward()
    out = case["outputs"]
    close(pooled, out["pooled_preds"])
    close(mce, out["bce_loss"])
    close(reg, out["reg_loss"])
    close(feats.grad, case["grads"]["features"])
    close(weight.grad.t(), case["grads"]["kernel"])


def _geometry(row: list[float]) -> torch.Tensor:
    """Official affine row [fliplr, flipud, transpose, y1, x1, y2, x2, rh, rw] (pixels) -> tagseg's
    [hflip, vflip, transpose, crop, y0, x0, size]."""
    fl, fu, tr, y1, x1, y2, x2 = row[:7]
    crop = float(y2 - y1 > 0)
    return torch.tensor([fl, fu, tr, crop, y1, x1, y2 - y1])


def _cce(align_corners: bool) -> tuple[torch.Tensor, torch.Tensor]:
    case = CASES["cce"]
    inp = case["inputs"]
    logits_a = t(regenerate(inp["logits_a"])).float()  # (B, h, w, K)
    logits_t = t(regenerate(inp["logits_mosaic"])).float().requires_grad_(True)  # (M, 2c, 2c, K)
    labels = t(regenerate(inp["labels"])).float()
    geom_a = torch.stack([_geometry(r) for r in regenerate(inp["affine"]).tolist()])
    geom_b = torch.stack([_geometry(r) for r in regenerate(inp["affine_t"]).tolist()])
    target = equivariance_target(logits_a.softmax(-1).permute(0, 3, 1, 2), geom_a, geom_b, labels,
                                 case["params"]["patch_size"], align_corners=align_corners)
    loss = equivariance_loss(logits_t.permute(0, 3, 1, 2), mosaic_indices(labels.shape[0]), target)
    loss.backward()
    return loss, logits_t.grad


def test_equivariance_loss_matches_official_cce_with_gradients():
    """method.et_align_corners=true (the default) is the official resize."""
    loss, grad = _cce(align_corners=True)
    close(loss, CASES["cce"]["outputs"]["cce_loss"])
    close(grad, CASES["cce"]["grads"]["logits_mosaic"])


def test_equivariance_loss_without_align_corners_departs_from_official():
    """method.et_align_corners=false (block-averaging reduction) is a different target: 1 % off here."""
    loss, _ = _cce(align_corners=False)
    assert abs(loss.item() / CASES["cce"]["outputs"]["cce_loss"] - 1.0) > 1e-3


def _port_keras_lstm(lstm: torch.nn.LSTM, specs: dict, prefix: str) -> None:
    """Keras LSTM weights (gates i, f, c, o as torch's i, f, g, o) -> one torch direction pair."""
    with torch.no_grad():
        for side, suffix in (("forward", ""), ("backward", "_reverse")):
            kernel = regenerate(specs[f"{prefix}_{side}_kernel"])  # (D, 4H)
            recurrent = regenerate(specs[f"{prefix}_{side}_recurrent_kernel"])  # (H, 4H)
            bias = regenerate(specs[f"{prefix}_{side}_bias"])  # (4H,)
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(torch.from_numpy(kernel.T))
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(recurrent.T))
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(bias))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()


def test_hv_bilstm_matches_official_with_ported_weights():
    case = CASES["hv_bilstm"]
    inp = case["inputs"]
    grid = torch.from_numpy(regenerate(inp["grid"])).requires_grad_(True)  # (B, h, w, D)
    cot = torch.from_numpy(regenerate(inp["cotangent"]))
    net = HVBiLSTM(grid.shape[-1], case["params"]["hidden"], dropout=0.2, input_dropout=0.2).eval()
    _port_keras_lstm(net.row_lstm, inp, "rows")
    _port_keras_lstm(net.col_lstm, inp, "cols")
    out = net(grid)
    (out * cot).sum().backward()
    close(out, case["outputs"]["features"])
    close(grid.grad, case["grads"]["grid"])


@pytest.mark.parametrize("name", ["rows_forward", "rows_backward", "cols_forward", "cols_backward"])
def test_fresh_lstm_bias_follows_keras(name):
    """Keras' fresh LSTM bias (unit_forget_bias): 1 on the forget gate, 0 elsewhere; tagseg's too."""
    keras_bias = t(CASES["hv_bilstm"]["outputs"]["keras_fresh_bias"][name])
    hidden = keras_bias.numel() // 4
    torch.manual_seed(0)
    net = HVBiLSTM(5, hidden)
    lstm = net.row_lstm if name.startswith("rows") else net.col_lstm
    suffix = "" if name.endswith("forward") else "_reverse"
    combined = getattr(lstm, f"bias_ih_l0{suffix}") + getattr(lstm, f"bias_hh_l0{suffix}")
    close(combined.detach(), keras_bias)


def test_lstm_input_dropout_masks_follow_official_by_default():
    """The official layer (TF2 Keras' fused LSTM) drops every step's input independently and its two
    directions apart; tagseg's default ``lstm_dropout_masks='per_step'`` does the same."""
    facts = CASES["lstm_input_dropout"]["outputs"]
    assert all(facts["fused_lstm_path"])
    assert facts["mask_varies_over_steps"] and not facts["directions_share_a_mask"]
    torch.manual_seed(0)
    net = HVBiLSTM(3, 2, dropout=0.0, input_dropout=0.5).train()  # defaults
    seq = torch.ones(16, 6, 3)
    torch.manual_seed(1)
    first, second = net.row_input_dropout(seq), net.row_input_dropout(seq)
    assert not (first == first[:, :1]).all() and not torch.equal(first, second)
    assert net.per_direction


def test_aligned_corner_resizes_match_official_resize():
    """The official ``utils.resize`` (tf.compat.v1 bilinear, align_corners=True) against tagseg's
    view-B resize (``method.et_align_corners``) and the patch family's inference resizes
    (``pseudo.align_corners``)."""
    from tagseg.data.geometry import crop_and_resize
    from tagseg.inference.multiscale import multiscale_maps, scaled_input

    case = CASES["resize"]
    grid = torch.from_numpy(regenerate(case["inputs"]["grid"])).permute(0, 3, 1, 2)  # (1, 3, 6, 7)
    photo = torch.from_numpy(regenerate(case["inputs"]["photo"]))[0].permute(2, 0, 1)  # (3, 40, 30)
    up = multiscale_maps(lambda batch: grid, photo, out_size=(17, 23), resize_policy="square", base_size=16,
                         align_corners=True)
    close(up.permute(1, 2, 0)[None], case["outputs"]["up"])
    close(crop_and_resize(photo, None, 16, align_corners=True).permute(1, 2, 0)[None], case["outputs"]["down"])
    close(scaled_input(photo, 1.0, "square", base_size=16, align_corners=True)[0].permute(1, 2, 0)[None],
          case["outputs"]["down"])
    plain = crop_and_resize(photo, None, 16, align_corners=False).permute(1, 2, 0)[None]
    assert not torch.allclose(plain.double(), t(case["outputs"]["down"]), atol=1e-3)
