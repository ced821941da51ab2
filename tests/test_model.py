"""Patch encoder grids (CNN and ViT), HV-BiLSTM axes, the patch classifier's contract."""

import pytest
import torch

from tagseg.config import ModelConfig
from tagseg.errors import ConfigError
from tagseg.models.encoder import PatchEncoder
from tagseg.models.hv_bilstm import HVBiLSTM
from tagseg.models.patch_classifier import build_patch_classifier


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_convnext"])
def test_cnn_encoder_gives_stride16_grid(name):
    enc = PatchEncoder(name).eval()
    out = enc(torch.rand(2, 3, 96, 64))
    assert out.shape == (2, enc.out_channels, 6, 4)


def test_vit_encoder_drops_cls_and_resamples_position_embeddings():
    enc = PatchEncoder("test_vit", image_size=64).eval()
    for size in (64, 96, 160):
        out = enc(torch.rand(1, 3, size, size))
        assert out.shape == (1, enc.out_channels, size // 16, size // 16)
    # at the native grid the output equals the final-norm patch tokens of timm's forward_features
    x = torch.rand(1, 3, 64, 64)
    tokens = enc.backbone.forward_features((x - enc.mean) / enc.std)
    expected = tokens[:, enc.backbone.num_prefix_tokens:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    assert torch.allclose(enc(x), expected, atol=1e-5)
    # a non-native grid uses bicubic-resampled position embeddings (timm's resampler)
    from timm.layers import resample_abs_pos_embed

    pe = resample_abs_pos_embed(enc.backbone.pos_embed, (6, 6), (4, 4),
                                num_prefix_tokens=enc.backbone.num_prefix_tokens, interpolation="bicubic")
    assert pe.shape[1] == 36 + enc.backbone.num_prefix_tokens


def test_encoder_rejects_bad_sizes():
    enc = PatchEncoder("test_resnet")
    with pytest.raises(ValueError, match="multiple of 16"):
        enc(torch.rand(1, 3, 40, 64))
    with pytest.raises(ConfigError, match="patch size"):
        PatchEncoder("vit_small_patch8_224")


def test_hv_bilstm_rows_see_rows_and_columns_see_columns():
    torch.manual_seed(0)
    lstm = HVBiLSTM(4, hidden=3, dropout=0.0).eval()
    x = torch.randn(1, 5, 6, 4)
    y = lstm(x)
    assert y.shape == (1, 5, 6, 12)
    x2 = x.clone()
    x2[0, 2, 3] += 1.0  # perturb one cell (row 2, column 3)
    d = (lstm(x2) - y).abs()
    row_part, col_part = d[0, ..., :6].sum(-1), d[0, ..., 6:].sum(-1)  # (h, w) each
    # the row LSTM's outputs change only in row 2 (all along it, both directions) ...
    assert torch.nonzero(row_part.sum(1) > 1e-7).flatten().tolist() == [2]
    assert (row_part[2] > 1e-7).all()
    # ... and the column LSTM's only in column 3
    assert torch.nonzero(col_part.sum(0) > 1e-7).flatten().tolist() == [3]
    assert (col_part[:, 3] > 1e-7).all()


def test_patch_classifier_forward_contract():
    cfg = ModelConfig(encoder="test_resnet", lstm_hidden=8)
    net = build_patch_classifier(cfg, num_classes=5, image_size=64).eval()
    out = net(torch.rand(2, 3, 64, 96))
    assert out.logits.shape == (2, 4, 6, 5) and out.features.shape == (2, 4, 6, 32)
    assert torch.allclose(out.probs.sum(-1), torch.ones(2, 4, 6))
    assert net.classifier.bias is None
    std = net.classifier.weight.std().item()
    assert 0.03 < std < 0.07  # N(0, 0.05^2) init
    assert all(not n.startswith("encoder.") for n, _ in net.named_parameters() if any(p is _ for p in net.head_parameters()))


def test_cnn_grid_dilated_uses_the_deepest_stage_at_stride_16():
    from tagseg.config import load_config
    from tagseg.errors import ConfigError

    dilated = build_patch_classifier(ModelConfig(encoder="test_resnet", lstm_hidden=8, cnn_grid="dilated"), 3, 64)
    cut = build_patch_classifier(ModelConfig(encoder="test_resnet", lstm_hidden=8, cnn_grid="cut"), 3, 64)
    x = torch.rand(1, 3, 64, 96)
    assert dilated.eval()(x).logits.shape[1:3] == cut.eval()(x).logits.shape[1:3] == (4, 6)
    info = cut.encoder.backbone.feature_info
    stride16 = [f for f in info if f["reduction"] == 16][-1]
    assert dilated.encoder.out_channels == info[-1]["num_chs"]  # the deepest stage ...
    assert info[-1]["reduction"] == 32 and cut.encoder.out_channels == stride16["num_chs"]  # ... vs the cut
    with pytest.raises(ConfigError, match="cnn_grid"):
        load_config("tkpcl_voc", ["model.cnn_grid=deep"])


def test_hv_bilstm_runs_in_fp32_under_cpu_autocast():
    """oneDNN lacks a bf16 LSTM on CPUs without AVX512-BF16: under CPU autocast the LSTMs run in fp32,
    so the output equals the plain fp32 one (eval mode: no dropout)."""
    from tagseg.models.hv_bilstm import HVBiLSTM

    torch.manual_seed(0)
    m = HVBiLSTM(8, 4).eval()
    x = torch.randn(2, 3, 5, 8)
    with torch.no_grad():
        plain = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = m(x)
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, plain)
