"""Segmentation stage: DeepLab heads, poly schedule, augmentation, loss, inference, resume,
predict (bad inputs) and the command line on tiny fixtures and real VOC images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from safetensors.torch import load_file

from fixtures import make_folder, make_voc, write_mask
from tagseg.data.classes import VOC_CLASSES, voc_palette
from tagseg.errors import ConfigError, DataError, TagsegError, TrainingError
from tagseg.cli import main
from tagseg.segment.config import SegAugmentConfig, SegInferenceConfig, SegModelConfig, load_segment_config
from tagseg.segment.data import SegmentationTrainSet, random_scale_crop_flip, resolve_mask_paths
from tagseg.inference.refine import refine_with_crf
from tagseg.inference.segment import multiscale_logits
from tagseg.segment.inference import load_segmenter, model_metadata, predict_probs
from tagseg.segment.models import DeepLabV2Head, DeepLabV3PlusHead, build_segmenter
from tagseg.segment.predict import colour_overlay, run_predict
from tagseg.engine.schedule import poly_lr, set_lr
from tagseg.segment.trainer import SegmentationTrainer, build_optimizer, segmentation_loss
from tagseg.engine.checkpoint import list_checkpoints, save_final_model

TINY = ["data.dataset=voc", "data.train_split=train", "data.val_split=val", "data.num_workers=0",
        "model.encoder=test_resnet", "model.pretrained=false", "model.aspp_channels=16",
        "model.low_level_channels=8", "augment.crop_size=32", "train.batch_size=2", "train.epochs=2",
        "segment.masks_dir=gt", "seed=3"]


def tiny_voc(root: Path, n: int = 4) -> list[str]:
    """make_voc plus a val list (the same images) so a run can be scored."""
    ids = make_voc(root, n=n)
    shutil.copy(root / "ImageSets" / "Segmentation" / "train.txt", root / "ImageSets" / "Segmentation" / "val.txt")
    return ids


def tiny_config(root: Path, *extra: str):
    return load_segment_config("segment_demo", [f"data.root={root}", *TINY, *extra])


# ---------------------------------------------------------------- networks

@pytest.mark.parametrize("encoder,head,stride", [
    ("test_resnet", "deeplabv2", 16), ("test_resnet", "deeplabv3plus", 8),
    ("test_vit", "deeplabv2", 16), ("test_vit", "deeplabv3plus", 16),
])
def test_heads_give_full_resolution_logits(encoder, head, stride):
    torch.manual_seed(0)
    cfg = SegModelConfig(head=head, encoder=encoder, output_stride=stride, aspp_channels=16, low_level_channels=8)
    net = build_segmenter(cfg, num_classes=5, image_size=64).eval()
    x = torch.rand(2, 3, 50, 70)  # not a multiple of the stride: padded inside, cropped back
    with torch.no_grad():
        high, low = net.backbone(torch.rand(2, 3, 64, 96))
        logits = net(x)
    assert logits.shape == (2, 5, 50, 70)
    assert high.shape[-2:] == (64 // stride, 96 // stride)
    if encoder == "test_vit":
        assert low is None and net.backbone.is_vit
    else:
        assert low.shape[-2:] == (16, 24)
        assert "backbone.mean" in net.state_dict()  # the normaliser travels with the weights
    if head == "deeplabv3plus":
        assert isinstance(net.head, DeepLabV3PlusHead) and (net.head.low is None) == (encoder == "test_vit")


def test_deeplabv2_head_sums_four_dilated_branches():
    torch.manual_seed(0)
    head = DeepLabV2Head(8, 3)
    assert [c.dilation for c in head.branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    x = torch.randn(1, 8, 30, 30)
    expected = sum(F.conv2d(x, c.weight, c.bias, padding=c.dilation, dilation=c.dilation) for c in head.branches)
    assert torch.allclose(head(x), expected, atol=1e-6)


def test_vit_has_no_dilated_variant():
    with pytest.raises(ConfigError, match="output_stride=16"):
        build_segmenter(SegModelConfig(encoder="test_vit", output_stride=8), 3, 64)


# ---------------------------------------------------------------- schedule and loss

def test_poly_schedule_values():
    assert poly_lr(0.01, 0, 100, 0.9) == 0.01
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)  # 0.0053589
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.0053588673)
    assert poly_lr(0.01, 75, 100, 1.0) == pytest.approx(0.0025)
    assert poly_lr(0.01, 100, 100, 0.9) == 0.0
    assert poly_lr(0.01, 150, 100, 0.9) == 0.0
    net = build_segmenter(SegModelConfig(head="deeplabv2", encoder="test_resnet"), 3, 64)
    cfg = load_segment_config(None, ["train.lr=0.01", "train.head_lr_mult=10"]).train
    opt = build_optimizer(net, cfg)
    set_lr(opt, poly_lr(cfg.lr, 50, 100, cfg.poly_power))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["backbone"] == pytest.approx(0.0053588673) and lrs["head"] == pytest.approx(0.053588673)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


def test_loss_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, :2] = 255
    target[1, 3, 1:4] = 255
    loss = segmentation_loss(logits, target)
    logp = torch.log_softmax(logits.detach(), dim=1)
    valid = target != 255
    picked = [-logp[b, target[b, i, j], i, j] for b, i, j in zip(*torch.nonzero(valid, as_tuple=True))]
    assert loss.item() == pytest.approx(float(sum(picked) / len(picked)), rel=1e-6)
    loss.backward()
    grad = logits.grad.abs().sum(1)
    assert torch.all(grad[~valid] == 0) and torch.all(grad[valid] > 0)
    none_valid = torch.full((1, 4, 5), 255)
    empty = segmentation_loss(torch.randn(1, 3, 4, 5, requires_grad=True), none_valid)
    assert empty.item() == 0.0
    empty.backward()


# ---------------------------------------------------------------- augmentation

def _block_image(rng: np.random.Generator, blocks: tuple[int, int] = (8, 10), cell: int = 16):
    """An image of flat colour blocks and its mask: class c <-> one colour (the mask comes from the pixels)."""
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)
    classes = rng.integers(0, len(colours), size=blocks)
    mask = np.kron(classes, np.ones((cell, cell), dtype=np.int64)).astype(np.uint8)
    return colours[mask], mask, colours


def _decode(image: torch.Tensor, colours: np.ndarray) -> np.ndarray:
    """The class whose colour is nearest to each pixel of image (3, H, W) in [0, 1]."""
    px = image.permute(1, 2, 0).numpy()[..., None, :] * 255.0
    return np.argmin(((px - colours[None, None].astype(np.float32)) ** 2).sum(-1), axis=-1)


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    image, mask, colours = _block_image(rng)
    aug = SegAugmentConfig(scale_range=(0.5, 1.5), crop_size=96, hflip_prob=0.5)
    pad = (0.25, 0.5, 0.75)
    x0 = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    saw_pad = saw_flip = 0
    for seed in range(12):
        x, m = random_scale_crop_flip(x0.clone(), torch.from_numpy(mask), aug, np.random.default_rng(seed), pad)
        assert x.shape == (3, 96, 96) and m.shape == (96, 96)
        m = m.numpy()
        ignored = m == 255
        padded = np.all(np.isclose(x.permute(1, 2, 0).numpy(), pad), axis=-1)
        assert np.array_equal(ignored, padded)  # padding: image = pad colour exactly where mask = 255
        saw_pad += ignored.any()
        decoded = _decode(x, colours)
        # compare away from class edges, where resampling blends colours: 5×5-uniform mask pixels
        valid = ~ignored & (ndimage.maximum_filter(m, 5) == ndimage.minimum_filter(m, 5))
        assert valid.sum() > 400
        agree = (decoded[valid] == m[valid]).mean()
        assert agree > 0.995, (seed, agree)
        # the check can fail: a mask flipped without its image disagrees
        flipped = m[:, ::-1]
        ok = valid & (flipped != 255)
        saw_flip += (decoded[ok] == flipped[ok]).mean() < 0.9
    assert saw_pad and saw_flip


def test_training_set_items_and_mask_errors(tmp_path):
    tiny_voc(tmp_path / "voc", n=3)
    cfg = tiny_config(tmp_path / "voc")
    from tagseg.data.build import build_index

    index = build_index(cfg.data, "train")
    ds = SegmentationTrainSet(index, resolve_mask_paths(index, "gt"), cfg.augment, seed=1)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.int64
    assert set(item["mask"].unique().tolist()) <= {0, 8, 12, 255}
    assert torch.equal(ds[1]["image"], item["image"])  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], item["image"])
    pseudo = tmp_path / "pseudo" / "masks"
    pseudo.mkdir(parents=True)
    with pytest.raises(DataError, match=r"3 of 3 training masks missing .*2008_000000\.png"):
        resolve_mask_paths(index, str(tmp_path / "pseudo"))
    for rec in index.records:
        write_mask(pseudo / f"{rec.id}.png", np.zeros((10, 10), dtype=np.uint8))
    paths = resolve_mask_paths(index, str(tmp_path / "pseudo"))  # finds the masks/ subfolder
    assert paths[0] == pseudo / "2008_000000.png"
    bad = SegmentationTrainSet(index, paths, cfg.augment)
    with pytest.raises(DataError, match=r"2008_000000\.png is 10×10 px but image .* is 64×48 px"):
        bad[0]
    with pytest.raises(DataError, match="segment.masks_dir is empty"):
        resolve_mask_paths(index, "")


# ---------------------------------------------------------------- inference

def test_multiscale_flip_equals_plain_loop():
    torch.manual_seed(0)
    net = build_segmenter(SegModelConfig(head="deeplabv3plus", encoder="test_resnet", aspp_channels=16,
                                         low_level_channels=8), 4, 64).eval()
    image = torch.rand(3, 37, 53)
    scales = (0.5, 1.0, 1.25)
    with torch.no_grad():
        fast = multiscale_logits(net, image, scales, flip=True)
        ref, n = torch.zeros(4, 37, 53), 0
        for s in scales:
            for mirrored in (False, True):
                h, w = max(1, round(37 * s)), max(1, round(53 * s))
                x = image[None] if (h, w) == (37, 53) else F.interpolate(
                    image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=s < 1)
                if mirrored:
                    x = x.flip(-1)
                y = net(x)
                if mirrored:
                    y = y.flip(-1)
                ref += F.interpolate(y, size=(37, 53), mode="bilinear", align_corners=False)[0]
                n += 1
        ref /= n
        plain = multiscale_logits(net, image, (1.0,), flip=False)
        assert torch.allclose(plain, net(image[None])[0], atol=1e-6)
    assert fast.shape == (4, 37, 53)
    assert torch.allclose(fast, ref, atol=1e-5)
    assert (fast - plain).abs().max() > 1e-3  # scales and flips really change the result


def test_crf_refinement_and_missing_module(monkeypatch):
    torch.manual_seed(0)
    net = build_segmenter(SegModelConfig(head="deeplabv2", encoder="test_resnet"), 3, 64).eval()
    image = (np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)
    plain = predict_probs(net, image, SegInferenceConfig())
    refined = predict_probs(net, image, SegInferenceConfig(crf="torch"))
    assert refined.shape == plain.shape == (3, 24, 30)
    assert torch.allclose(refined.sum(0), torch.ones(24, 30), atol=1e-3)
    assert not torch.allclose(refined, plain, atol=1e-4)
    monkeypatch.setitem(sys.modules, "tagseg.inference.crf", None)  # import now fails
    with pytest.raises(TagsegError, match="cannot be imported"):
        refine_with_crf(image, plain, "torch")


def test_colour_overlay_tints_only_object_pixels():
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    mask = np.array([[0, 8, 255], [12, 0, 8]], dtype=np.uint8)
    out = colour_overlay(image, mask, voc_palette(), alpha=0.5)
    pal = np.array(voc_palette()).reshape(-1, 3)
    assert np.array_equal(out[0, 0], image[0, 0]) and np.array_equal(out[0, 2], image[0, 2])
    assert np.array_equal(out[0, 1], np.rint(50 + 0.5 * pal[8]).astype(np.uint8))
    assert np.array_equal(out[1, 0], np.rint(50 + 0.5 * pal[12]).astype(np.uint8))


# ---------------------------------------------------------------- training

def test_resume_continues_exactly(tmp_path):
    tiny_voc(tmp_path / "voc", n=5)
    cfg = tiny_config(tmp_path / "voc")
    full = SegmentationTrainer(cfg, tmp_path / "full", show_progress=False).fit()
    SegmentationTrainer(cfg, tmp_path / "split", show_progress=False).fit(stop_after_epoch=1)
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["epoch_0001"]
    assert not (tmp_path / "split" / "model.safetensors").exists()
    resumed = SegmentationTrainer(cfg, tmp_path / "split", resume=True, show_progress=False).fit()
    a, b = load_file(str(full)), load_file(str(resumed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # a different seed really gives different weights (the comparison above can fail)
    other = SegmentationTrainer(tiny_config(tmp_path / "voc", "seed=4"), tmp_path / "other",
                                show_progress=False).fit(stop_after_epoch=1)
    a1 = load_file(str(tmp_path / "full" / "checkpoints" / "epoch_0001" / "model.safetensors"))
    c1 = load_file(str(other / "model.safetensors"))
    assert any(not torch.equal(a1[k], c1[k]) for k in a1)
    history = [json.loads(line) for line in (tmp_path / "split" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    # 5 images, batch 2 -> 3 steps per epoch, 6 in all; the last step of epoch 1 is step index 2
    assert history[0]["step"] == 3 and history[0]["lr_last"] == pytest.approx(cfg.train.lr * (1 - 2 / 6) ** 0.9)
    assert (tmp_path / "full" / "tb").is_dir() and (tmp_path / "full" / "config.yaml").is_file()


def test_resume_refuses_another_configuration(tmp_path):
    tiny_voc(tmp_path / "voc", n=3)
    SegmentationTrainer(tiny_config(tmp_path / "voc"), tmp_path / "run", show_progress=False).fit(stop_after_epoch=1)
    with pytest.raises(TrainingError, match=r"train.head_lr_mult: 1.0 -> 5.0"):
        SegmentationTrainer(tiny_config(tmp_path / "voc", "train.head_lr_mult=5"), tmp_path / "run", resume=True,
                            show_progress=False).fit()
    # settings that do not change the training (logging, workers) may change
    SegmentationTrainer(tiny_config(tmp_path / "voc", "train.log_every=3"), tmp_path / "run", resume=True,
                        show_progress=False).fit()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    tiny_voc(tmp_path / "voc", n=4)
    import tagseg.segment.trainer as trainer_module

    real, calls = trainer_module.segmentation_loss, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss  # first step of epoch 2

    monkeypatch.setattr(trainer_module, "segmentation_loss", flaky)
    with pytest.raises(TrainingError, match="non-finite loss at epoch 2, step 1"):
        SegmentationTrainer(tiny_config(tmp_path / "voc"), tmp_path / "run", show_progress=False).fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch_0001"]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    tiny_voc(tmp_path / "voc", n=6)
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tagseg", "segment", "train", "--config", "segment_demo", "--out", str(out),
           f"data.root={tmp_path / 'voc'}", *TINY, "train.epochs=1", "train.batch_size=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in list_checkpoints(out)] == ["epoch_0001"]
    history = (out / "history.jsonl").read_text().splitlines()
    # train.batch_size is the global batch: 4 = 2 ranks × 2 images, so 6 images take 2 steps
    assert len(history) == 1 and json.loads(history[0])["step"] == 2


# ---------------------------------------------------------------- predict

def _saved_model(path: Path, class_names=VOC_CLASSES) -> Path:
    cfg = load_segment_config(None, ["model.encoder=test_resnet", "model.head=deeplabv2", "augment.crop_size=64"])
    torch.manual_seed(0)
    net = build_segmenter(cfg.model, len(class_names), 64)
    save_final_model(path, net, model_metadata(cfg, class_names, voc_palette()))
    return path


def test_predict_reports_bad_inputs_and_keeps_going(tmp_path, capsys):
    model = _saved_model(tmp_path / "model.safetensors")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png"):
        Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(images / name)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "notes.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    report = run_predict([images, empty, tmp_path / "missing.jpg"], model, out, progress=False)
    assert sorted(p.name for p in report.written) == ["a.png", "b.png"]
    failed = dict(report.failures)
    assert set(failed) == {str(images / "broken.jpg"), str(empty), str(tmp_path / "missing.jpg")}
    assert "cannot decode image" in failed[str(images / "broken.jpg")]
    assert "no images" in failed[str(empty)]
    mask = np.array(Image.open(out / "masks" / "a.png"))
    assert mask.shape == (20, 28) and Image.open(out / "masks" / "a.png").mode == "P"
    assert np.array(Image.open(out / "overlays" / "a.png")).shape == (20, 28, 3)
    assert len(json.loads((out / "predictions.json").read_text())["failures"]) == 3

    # the command line lists the failures and exits with 1; only an empty folder -> error 2
    assert main(["predict", str(images), "--model", str(model), "--out", str(tmp_path / "cli")]) == 1
    err = capsys.readouterr().err
    assert "1 inputs failed" in err and "broken.jpg" in err
    assert main(["predict", str(empty), "--model", str(model), "--out", str(tmp_path / "cli2")]) == 2
    err = capsys.readouterr().err
    assert "no images to predict" in err and "folder contains no images" in err


def test_predict_class_set_and_model_checks(tmp_path, capsys):
    model = _saved_model(tmp_path / "model.safetensors")
    img = tmp_path / "img.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(img)
    fruit = tmp_path / "fruit"
    fruit.mkdir()
    (fruit / "classes.txt").write_text("background\napple\npear\n")
    with pytest.raises(TagsegError, match=r"class-set mismatch: .* \(21 classes vs 3\)"):
        run_predict([img], model, tmp_path / "o", classes=str(fruit), progress=False)
    assert run_predict([img], model, tmp_path / "o", classes="voc", progress=False).written
    # same count, different names
    names = list(VOC_CLASSES)
    names[8] = "lion"
    other = _saved_model(tmp_path / "other.safetensors", tuple(names))
    with pytest.raises(TagsegError, match="class 8 is 'lion' in the model but 'cat'"):
        run_predict([img], other, tmp_path / "o", classes="voc", progress=False)
    # a file that is not a segmentation model
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "patch.safetensors"), metadata={"format": "tagseg.patch_classifier/1"})
    assert main(["predict", str(img), "--model", str(tmp_path / "patch.safetensors")]) == 2
    assert "not a tagseg segmentation model" in capsys.readouterr().err


@pytest.mark.parametrize("family,fmt", [("patch", "tagseg.patch_classifier/1"), ("cam", "tagseg.cam/1"),
                                        ("seam", "tagseg.seam/1")])
def test_predict_given_a_tag_classifier_of_any_family_points_to_pseudo(tmp_path, capsys, family, fmt):
    from safetensors.torch import save_file

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "tags.safetensors"), metadata={"format": fmt})
    assert main(["predict", str(img), "--model", str(tmp_path / "tags.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "not a tagseg segmentation model" in err
    assert f"a tag classifier of model.family={family}: use it with `tagseg pseudo`" in err


# ---------------------------------------------------------------- command line

def test_cli_segment_train_eval_predict(tmp_path, capsys):
    voc = tmp_path / "voc"
    ids = tiny_voc(voc, n=4)
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for i in ids[:3]:  # the pseudo-masks: copies of the ground truth, one missing at first
        shutil.copy(voc / "SegmentationClassAug" / f"{i}.png", pseudo / f"{i}.png")
    run = tmp_path / "run"
    args = ["segment", "train", "--config", "segment_demo", "--out", str(run), f"data.root={voc}", *TINY,
            f"segment.masks_dir={pseudo}", "model.head=deeplabv2", "inference.flip=true"]
    assert main(args) == 2
    assert "1 of 4 training masks missing" in capsys.readouterr().err
    shutil.copy(voc / "SegmentationClassAug" / f"{ids[3]}.png", pseudo / f"{ids[3]}.png")
    assert main(args) == 0
    assert (run / "model.safetensors").is_file()
    assert main(args) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["segment", "eval", "--run", str(run), "--save-masks"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "contour F" in out and "J&F" in out
    summary = json.loads((run / "eval.json").read_text())
    assert summary["images"] == 4 and len(summary["iou"]) == 21 and summary["split"] == "val"
    assert 0.0 <= summary["miou"] <= 1.0 and summary["contour"]["num_images"] == 4
    if summary["contour_f"] is not None:
        assert summary["j_and_f"] == pytest.approx((summary["miou"] + summary["contour_f"]) / 2)
    assert summary["inference"]["flip"] is True
    assert len(list((run / "predictions" / "val").glob("*.png"))) == 4
    assert main(["predict", str(voc / "JPEGImages"), "--model", str(run), "--out", str(tmp_path / "pred"),
                 "--scales", "0.75,1", "--no-flip"]) == 0
    assert len(list((tmp_path / "pred" / "overlays").glob("*.png"))) == 4
    assert json.loads((tmp_path / "pred" / "predictions.json").read_text())["inference"]["scales"] == [0.75, 1.0]
    assert main(["segment", "eval", "--run", str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    make_folder(tmp_path / "fruit")  # another class set: background, apple, pear
    assert main(["segment", "eval", "--run", str(run), "data.dataset=folder", f"data.root={tmp_path / 'fruit'}",
                 "data.val_split=all"]) == 2
    assert "class-set mismatch" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_on_real_voc_images(voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    common = [f"data.root={voc_root}", "data.dataset=voc", "data.train_split=train_aug", "data.val_split=val",
              "data.max_images=6", "data.num_workers=0", "model.encoder=test_resnet", "model.pretrained=false",
              "model.aspp_channels=16", "model.low_level_channels=8", "augment.crop_size=64",
              "train.batch_size=3", "train.epochs=1", "segment.masks_dir=gt"]
    assert main(["segment", "train", "--config", "segment_demo", "--out", str(run), *common]) == 0
    assert main(["segment", "eval", "--run", str(run), "data.max_images=3"]) == 0
    summary = json.loads((run / "eval.json").read_text())
    assert summary["dataset"] == "voc:val" and summary["images"] == 3 and len(summary["iou"]) == 21
    images = tmp_path / "val_images"
    images.mkdir()
    ids = (voc_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:3]
    for i in ids:
        shutil.copy(voc_root / "JPEGImages" / f"{i}.jpg", images)
    assert main(["predict", str(images), "--model", str(run / "model.safetensors"), "--out", str(tmp_path / "p"),
                 "--classes", "voc"]) == 0
    for i in ids:
        w, h = Image.open(voc_root / "JPEGImages" / f"{i}.jpg").size
        assert np.array(Image.open(tmp_path / "p" / "masks" / f"{i}.png")).shape == (h, w)
        assert (tmp_path / "p" / "overlays" / f"{i}.png").is_file()
    model, cfg, info = load_segmenter(run / "model.safetensors")
    assert info["class_names"] == list(VOC_CLASSES) and cfg.model.encoder == "test_resnet"
