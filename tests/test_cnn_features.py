"""model.cnn_features = last_block | head on real timm CNNs (dilated encoders)."""

from __future__ import annotations

import pytest
import torch

from tagseg.config import TrainConfig, load_config
from tagseg.engine.phases import Phase, apply_phase
from tagseg.errors import ConfigError
from tagseg.methods.cam_objective import build_cam_net, cam_classification_loss
from tagseg.models.encoder import PatchEncoder


def _encoder(features: str, name: str = "tf_efficientnet_lite0") -> PatchEncoder:
    torch.manual_seed(0)
    return PatchEncoder(name, output_stride=16, cnn_features=features)


def test_head_keeps_efficientnets_feature_head():
    enc = _encoder("head")
    assert enc.out_channels == 1280
    out = enc.eval()(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1280, 4, 4)
    assert out.min() >= 0 and out.max() <= 6  # ReLU6 after the head's BatchNorm
    names = [type(m).__name__ for m in enc.final_norm()]
    assert names == ["Conv2d", "BatchNormAct2d"]  # trained with the last blocks after warm-up
    assert _encoder("last_block").out_channels == 320 and _encoder("last_block").final_norm() == []


def test_last_block_output_has_its_batch_mean_pinned_in_train_mode():
    """Why 'head' exists: EfficientNet's last block ends in a linear BatchNorm; in train mode the batch
    mean of each output channel equals that BatchNorm's bias whatever the images, so no bias-free
    linear head on top can move its mean logit."""
    enc = _encoder("last_block").train()
    last_bn = enc.backbone.blocks[-1][-1].bn3
    with torch.no_grad():
        last_bn.bias.normal_()
        a = enc(torch.rand(4, 3, 64, 64)).mean(dim=(0, 2, 3))
        b = enc(torch.rand(4, 3, 64, 64) * 0.2).mean(dim=(0, 2, 3))
        head = _encoder("head").train()
        c = head(torch.rand(4, 3, 64, 64)).mean(dim=(0, 2, 3))
        d = head(torch.rand(4, 3, 64, 64) * 0.2).mean(dim=(0, 2, 3))
    torch.testing.assert_close(a, last_bn.bias, atol=1e-4, rtol=0)
    torch.testing.assert_close(b, last_bn.bias, atol=1e-4, rtol=0)
    assert (c - d).abs().max() > 1e-2


def test_resnet_head_is_its_last_stage():
    """A ResNet has no layers after its last stage: both settings give the same map."""
    a, b = _encoder("last_block", "resnet18").eval(), _encoder("head", "resnet18").eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def _cam_fit(features: str, steps: int = 25) -> float:
    """Head-only training of a CAM network (encoder frozen, BatchNorm statistics adapting) on a
    fixed batch where class 1 is present in every image and the other classes in none."""
    cfg = load_config("cam_voc", ["model.encoder=tf_efficientnet_lite0", "model.pretrained=false",
                                  f"model.cnn_features={features}", "data.image_size=64"])
    torch.manual_seed(0)
    net = build_cam_net(cfg, 4)
    frozen = apply_phase(net, TrainConfig(), Phase("warmup", 1e-2, False), "adapt")
    net.train()
    for m in frozen:
        m.eval()
    opt = torch.optim.Adam(net.head_parameters(), lr=1e-2)
    x = torch.rand(4, 3, 64, 64)
    labels = torch.tensor([[0, 1, 0, 0]] * 4)
    for _ in range(steps):
        loss = cam_classification_loss(net(x).cams, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_cam_head_learns_class_priors_only_with_the_feature_head():
    """With model.bn=adapt the bias-free CAM head cannot push absent classes below a zero logit on
    last_block features (soft-margin loss stays near log 2 for them); with 'head' it can."""
    assert _cam_fit("head") < 0.2
    assert _cam_fit("last_block") > 0.4


def test_cnn_features_is_checked():
    with pytest.raises(ConfigError, match="cnn_features"):
        load_config("cam_voc", ["model.cnn_features=neck"])
