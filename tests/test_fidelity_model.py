"""Paper details of the patch classifier: ViT / LSTM-input dropouts (active only in train mode) and
the ViT weights tag the official ViT-PCM code uses."""

from __future__ import annotations

import pytest
import torch

from tagseg.config import ModelConfig, load_config, shipped_configs
from tagseg.errors import ConfigError
from tagseg.experiment import load_experiment
from tagseg.models.encoder import PatchEncoder
from tagseg.models.hv_bilstm import HVBiLSTM, SequenceInputDropout
from tagseg.models.patch_classifier import build_patch_classifier

VIT_TAG = "vit_base_patch16_384.orig_in21k_ft_in1k"


def test_defaults_follow_the_papers():
    m = ModelConfig()
    assert (m.dropout, m.lstm_input_dropout, m.vit_dropout) == (0.2, 0.2, 0.1)
    with pytest.raises(ConfigError, match="model.lstm_input_dropout"):
        load_config("demo", ["model.lstm_input_dropout=1.0"])


def test_lstm_input_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    net = HVBiLSTM(6, hidden=4, dropout=0.0, input_dropout=0.2)
    x = torch.randn(2, 3, 5, 6)
    net.train()
    a, b = net(x), net(x)
    assert not torch.allclose(a, b)  # a new mask each call
    net.eval()
    ref = HVBiLSTM(6, hidden=4, dropout=0.0, input_dropout=0.0)
    ref.load_state_dict(net.state_dict())
    ref.eval()
    assert torch.equal(net(x), net(x)) and torch.allclose(net(x), ref(x))  # identity in eval mode


def test_sequence_dropout_mask_is_shared_over_steps():
    torch.manual_seed(1)
    drop = SequenceInputDropout(0.5).train()
    y = drop(torch.ones(4, 7, 10))
    zero = y == 0
    assert zero.any() and (zero == zero[:, :1]).all()  # the same features dropped at every step
    assert torch.allclose(y[~zero], torch.full_like(y[~zero], 2.0))  # kept ones scaled by 1/(1-p)


def test_vit_dropout_is_active_in_train_mode_only():
    torch.manual_seed(0)
    enc = PatchEncoder("vit_tiny_patch16_224", image_size=64, vit_dropout=0.1)
    block = enc.backbone.blocks[0]
    assert block.attn.proj_drop.p == 0.1 and block.mlp.drop1.p == 0.1 and block.mlp.drop2.p == 0.1
    x = torch.rand(1, 3, 64, 64)
    enc.train()
    assert not torch.allclose(enc(x), enc(x))
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    plain = PatchEncoder("vit_tiny_patch16_224", image_size=64, vit_dropout=0.0)
    plain.load_state_dict(enc.state_dict())
    assert torch.allclose(plain.eval()(x), enc(x), atol=1e-6)


def test_patch_classifier_carries_both_dropouts():
    cfg = ModelConfig(encoder="vit_tiny_patch16_224", lstm_hidden=8)
    net = build_patch_classifier(cfg, 3, 64)
    assert net.conditioning.row_input_dropout.p == 0.2 and net.conditioning.col_input_dropout.p == 0.2
    assert net.encoder.backbone.blocks[-1].attn.proj_drop.p == 0.1


@pytest.mark.parametrize("name", ["tkpcl_voc", "vitpcm_voc", "avgpool_voc", "tkpcl_coco", "vitpcm_coco"])
def test_vit_configs_name_the_original_in21k_weights(name):
    cfg = load_experiment(name)
    assert cfg.model.encoder == VIT_TAG


def test_the_tagged_name_builds_offline_with_its_own_normalisation():
    enc = PatchEncoder(VIT_TAG, pretrained=False, image_size=384)
    assert enc.backbone.pretrained_cfg["tag"] == "orig_in21k_ft_in1k"
    assert enc.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_every_shipped_config_states_its_paper_row():
    from importlib import resources

    for name in shipped_configs():
        text = (resources.files("tagseg") / "configs" / f"{name}.yaml").read_text()
        assert text.startswith("# Paper row:"), name


def test_avgpool_is_the_papers_avg_row():
    avg, topk = load_experiment("avgpool_voc"), load_experiment("tkpcl_voc")
    assert avg.method.pooling == "avg" and avg.method.et_weight == topk.method.et_weight == 1.0
    assert avg.method.pce_weight == 0.0
    assert avg.model == topk.model and avg.train == topk.train
