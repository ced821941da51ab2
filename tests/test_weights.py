"""Local weights files: reading, loading with clear errors, timm's checkpoint filters."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from tagseg.errors import ConfigError, TagsegError
from tagseg.models.factory import build_timm_model
from tagseg.models.weights import load_into, load_local_weights, read_state_dict

SMALL = "test_efficientnet"


def _small(seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(SMALL, **kwargs).eval()


def _save(sd: dict[str, torch.Tensor], path, fmt: str) -> None:
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    if fmt == "pth":
        torch.save(sd, path)
    elif fmt == "pth-wrapped":
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif fmt == "safetensors":
        save_file(sd, str(path))
    elif fmt == "npz":
        np.savez(path, **{k: v.numpy() for k, v in sd.items()})
    else:
        raise AssertionError(fmt)


@pytest.mark.parametrize(
    "fmt,suffix",
    [("pth", ".pth"), ("pth-wrapped", ".pt"), ("safetensors", ".safetensors"), ("npz", ".npz")],
)
def test_round_trip_gives_identical_outputs(tmp_path, fmt, suffix):
    src = _small(0)
    path = tmp_path / f"w{suffix}"
    _save(src.state_dict(), path, fmt)
    x = torch.randn(2, 3, 64, 64)
    dst = build_timm_model(SMALL, weights=str(path))
    dst.eval()
    fresh = _small(1)
    assert not torch.allclose(fresh(x), src(x))  # the loaded weights do make a difference
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_read_state_dict_unwraps_model_key_and_module_prefix(tmp_path):
    sd = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    path = tmp_path / "w.bin"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    got = read_state_dict(path)
    assert set(got) == set(sd)
    assert torch.equal(got["a.weight"], sd["a.weight"])


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(TagsegError, match="nope.pth"):
        read_state_dict(path)
    with pytest.raises(TagsegError, match="nope.pth"):
        build_timm_model(SMALL, weights=str(path))


def test_unreadable_and_unsupported_files_name_path(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(TagsegError, match="garbage.pth"):
        read_state_dict(bad)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"x")
    with pytest.raises(TagsegError, match="weights.h5"):
        read_state_dict(odd)
    nontensor = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "lr": 0.1}, nontensor)
    with pytest.raises(TagsegError, match="meta.pth.*epoch"):
        read_state_dict(nontensor)


def test_missing_keys_are_named():
    model = _small(0)
    sd = model.state_dict()
    sd.pop("conv_stem.weight")
    sd.pop("classifier.bias")
    with pytest.raises(TagsegError) as info:
        load_into(model, sd, source="ckpt-A")
    msg = str(info.value)
    assert "ckpt-A" in msg and "2 missing keys" in msg
    assert "conv_stem.weight" in msg and "classifier.bias" in msg


def test_unexpected_keys_are_named():
    model = _small(0)
    sd = dict(model.state_dict())
    sd["extra.weight"] = torch.zeros(3)
    with pytest.raises(TagsegError, match=r"ckpt-B.*1 unexpected keys: extra\.weight"):
        load_into(model, sd, source="ckpt-B")
    load_into(model, sd, source="ckpt-B", strict=False)  # tolerated when not strict


def test_shape_mismatch_is_named_even_when_not_strict():
    model = _small(0)
    sd = dict(model.state_dict())
    sd["classifier.weight"] = torch.zeros(7, sd["classifier.weight"].shape[1])
    for strict in (True, False):
        with pytest.raises(TagsegError, match=r"ckpt-C.*shape mismatches: classifier\.weight: checkpoint \(7,"):
            load_into(model, sd, source="ckpt-C", strict=strict)


def test_long_key_lists_are_truncated_with_count():
    model = _small(0)
    with pytest.raises(TagsegError) as info:
        load_into(model, {}, source="empty")
    msg = str(info.value)
    n_missing = sum(not k.endswith("num_batches_tracked") for k in model.state_dict())
    assert f"{n_missing} missing keys" in msg
    assert f"(+{n_missing - 10} more)" in msg


def test_ignore_prefixes_skips_both_sides():
    src = _small(0)
    dst = _small(1, num_classes=5)
    sd = dict(src.state_dict())
    sd["head_extra.w"] = torch.zeros(1)
    head_before = dst.classifier.weight.detach().clone()
    with pytest.raises(TagsegError, match="classifier.weight"):
        load_into(dst, sd, source="src")
    load_into(dst, sd, source="src", ignore_prefixes=("classifier.", "head_extra"))
    assert torch.equal(dst.classifier.weight, head_before)  # ignored model side keeps its values
    assert torch.equal(dst.conv_stem.weight, src.conv_stem.weight)


def test_head_absent_or_resized_is_not_an_error(tmp_path):
    src = _small(0)
    path = tmp_path / "w.safetensors"
    _save(src.state_dict(), path, "safetensors")
    x = torch.randn(1, 3, 64, 64)
    headless = build_timm_model(SMALL, weights=str(path), num_classes=0).eval()
    with torch.no_grad():
        assert torch.allclose(headless(x), src.forward_head(src.forward_features(x), pre_logits=True))
    resized = build_timm_model(SMALL, weights=str(path), num_classes=3)
    assert resized.classifier.weight.shape[0] == 3
    assert torch.equal(resized.conv_stem.weight, src.conv_stem.weight)


def test_features_only_loads_kept_stages(tmp_path):
    src = _small(0)
    path = tmp_path / "w.pth"
    _save(src.state_dict(), path, "pth")
    feats = build_timm_model(SMALL, weights=str(path), features_only=True, out_indices=(1, 2))
    for k, v in feats.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_features_only_with_renamed_modules_matches_intermediates(tmp_path):
    """timm's feature wrapper renames ConvNeXt modules (stages.1 -> stages_1)."""
    torch.manual_seed(0)
    src = timm.create_model("test_convnext").eval()
    path = tmp_path / "convnext.safetensors"
    _save(src.state_dict(), path, "safetensors")
    feats = build_timm_model("test_convnext", weights=str(path), features_only=True, out_indices=(1, 2)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = feats(x)
        expected = src.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert len(got) == 2
    for g, e in zip(got, expected):
        assert torch.allclose(g, e, atol=1e-6)


def test_foreign_checkpoint_reports_keys(tmp_path):
    path = tmp_path / "effnet.pth"
    _save(_small(0).state_dict(), path, "pth")
    with pytest.raises(TagsegError, match=r"effnet\.pth.*missing keys: stem"):
        build_timm_model("test_convnext", weights=str(path))


def test_unknown_model_name_is_a_config_error():
    with pytest.raises(ConfigError, match="no_such_net"):
        build_timm_model("no_such_net")


def test_weights_and_pretrained_together_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained"):
        build_timm_model(SMALL, weights=str(tmp_path / "w.pth"), pretrained=True)


def test_lite_weights_only_for_lite_variants():
    with pytest.raises(ConfigError, match="resnet18"):
        build_timm_model("resnet18", weights="lite")


def test_vit_position_embedding_resampled_to_384_grid(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224").eval()
    path = tmp_path / "vit.pth"
    _save(src.state_dict(), path, "pth")

    torch.manual_seed(1)
    dst = timm.create_model("vit_tiny_patch16_224", img_size=384).eval()
    # Without timm's filter the grid difference is a clear shape error.
    with pytest.raises(TagsegError, match=r"pos_embed: checkpoint \(1, 197, 192\) vs model \(1, 577, 192\)"):
        load_into(dst, read_state_dict(path), source=str(path))
    # The same path build_timm_model(..., weights=path, img_size=384) takes.
    load_local_weights(dst, "vit_tiny_patch16_224", path)
    pe_src, pe_dst = src.pos_embed.detach(), dst.pos_embed.detach()
    assert pe_dst.shape == (1, 1 + 24 * 24, 192)
    assert torch.equal(pe_dst[:, :1], pe_src[:, :1])  # class-token slot is not resampled
    grid = pe_src[:, 1:].reshape(1, 14, 14, 192).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(24, 24), mode="bicubic", antialias=True, align_corners=False)
    expected = expected.permute(0, 2, 3, 1).reshape(1, 576, 192)
    assert torch.allclose(pe_dst[:, 1:], expected, atol=1e-5)
    for k, v in src.state_dict().items():
        if k != "pos_embed":
            assert torch.equal(dst.state_dict()[k], v), k
    with torch.no_grad():
        out = dst(torch.randn(1, 3, 384, 384))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
