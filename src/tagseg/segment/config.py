"""Configuration schema of the segmentation stage (DeepLab trained on pseudo-masks).

Resolved like every tagseg config: dataclass defaults <- YAML <- ``key=value`` overrides, with
``load_segment_config``. Sections: ``data`` (the shared :class:`~tagseg.config.DataConfig`),
``segment`` (where the training masks come from), ``model``, ``train``, ``augment`` and
``inference``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from tagseg.config import CRF_CHOICES, OUTPUT_STRIDES, SELECT_MODES, RunConfig, check_speed_options, choose, config_from_yaml, load_config
from tagseg.errors import ConfigError

HEADS = ("deeplabv2", "deeplabv3plus")
OPTIMIZERS = ("sgd", "adamw")
SAMPLINGS = ("uniform", "repeat_factor")
GT_MASKS = "gt"  # segment.masks_dir value that trains on the dataset's ground-truth masks
MASK_KINDS = ("auto", "refine", "crf", "confident", "plain")  # segment.mask_kind


@dataclass
class SegmentSourceConfig:
    """Training targets: a folder of ``<id>.png`` pseudo-masks for ``data.train_split``.

    masks_dir: the folder holding the masks, or a ``tagseg pseudo`` output folder with a
    ``masks/`` subfolder, or ``gt`` for the dataset's own ground-truth masks (upper bound).
    """

    masks_dir: str = ""
    # auto: the best masks of masks_dir's run and split that exist: refined by `tagseg refine`
    # (<run>/refine/<irn|psa|par>/<split>/masks), else CRF-refined (<pseudo>/crf/masks), else the plain
    # ones | refine / crf: that kind, error when absent | confident: PAR's two-threshold labels
    # (<run>/refine/par/<split>/confident; 255 where unsure, left out of the loss) | plain: masks_dir as given
    mask_kind: str = "auto"


@dataclass
class SegModelConfig:
    """DeepLab head on a timm backbone.

    head: deeplabv2 (ASPP: parallel dilated 3×3 convs to K classes, summed) or deeplabv3plus
    (ASPP with image pooling + decoder on stride-4 features; ViTs have no stride-4 features,
    so their decoder has no low-level branch).
    output_stride: 16, or 8 for CNNs whose timm builder takes ``output_stride`` (dilation).
    aspp_rates: dilation rates; empty = the head's default (v2: 6, 12, 18, 24; v3+: 6, 12, 18
    at stride 16, doubled at stride 8).
    """

    head: str = "deeplabv2"
    encoder: str = "resnet101"
    weights: Optional[str] = None  # local .pth/.safetensors/.npz, or 'lite' (tagseg[lite])
    pretrained: bool = False  # timm hub weights (needs internet)
    output_stride: int = 16
    aspp_rates: list[int] = field(default_factory=list)
    aspp_channels: int = 256  # v3+ ASPP and decoder width
    low_level_channels: int = 48  # v3+ projection of the stride-4 features
    dropout: float = 0.1  # v3+: after the ASPP projection


@dataclass
class SegTrainConfig:
    """Optimisation: SGD with momentum (DeepLab) or AdamW; poly learning rate per iteration:
    lr_t = lr · (1 − t/T)^poly_power, T = epochs × iterations per epoch. The head's learning rate
    is ``head_lr_mult`` × lr."""

    epochs: int = 20
    batch_size: int = 10  # GLOBAL batch: under torchrun each of N processes takes batch_size / N (must divide)
    optimizer: str = "sgd"
    lr: float = 2.5e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    freeze_backbone_bn: bool = False  # keep the backbone's BatchNorm statistics fixed
    amp: bool = True  # older switch, replaced by precision: false = fp32 (with precision=auto)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (autocast; fp16 + grad scaler)
    compile: bool = False  # torch.compile the training forward pass
    channels_last: bool = False  # NHWC memory for CNN backbones (GPU tensor cores)
    grad_clip: float = 0.0
    log_every: int = 10  # steps between TensorBoard scalar writes
    keep_checkpoints: int = 2
    # which epoch becomes model.safetensors: last | best (highest mIoU of single-scale predictions
    # against the training masks in use on the first select_images images of data.train_split --
    # no ground truth, and never the scored data.val_split), scored every select_every epochs + the last
    select: str = "last"
    select_every: int = 1
    select_images: int = 100
    # which images an epoch draws: uniform (each once, shuffled) | repeat_factor (as many draws,
    # with replacement, images holding rare classes more often: LVIS repeat factors from the image
    # tags, r = max(1, sqrt(repeat_threshold / fraction of images with the class)); tagseg.engine.sampling)
    sampling: str = "uniform"
    repeat_threshold: float = 0.1


@dataclass
class SegAugmentConfig:
    """Random scale (of the original image), pad (image: the normaliser's mean, mask: 255),
    random crop to crop_size × crop_size, horizontal flip."""

    scale_range: tuple[float, float] = (0.5, 1.5)
    crop_size: int = 321
    hflip_prob: float = 0.5


@dataclass
class SegInferenceConfig:
    """Multi-scale + flip inference: logits averaged over scales (and the flipped image),
    optional dense CRF on the softmax (CRF preset from METHODS.md §5)."""

    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    crf: str = "none"  # none | torch | pydensecrf
    crf_preset: str = "segmentation"
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16: inference autocast
    channels_last: bool = False  # NHWC memory for CNN backbones


@dataclass
class SegmentExperimentConfig(RunConfig):
    """The segmentation stage's run: the shared part (:class:`tagseg.config.RunConfig`) and its own sections."""

    name: str = "segment"
    segment: SegmentSourceConfig = field(default_factory=SegmentSourceConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    augment: SegAugmentConfig = field(default_factory=SegAugmentConfig)
    inference: SegInferenceConfig = field(default_factory=SegInferenceConfig)


def validate_inference(inf: SegInferenceConfig) -> None:
    """Reject unusable inference settings, naming the key."""
    if not inf.scales or any(s <= 0 for s in inf.scales):
        raise ConfigError(f"inference.scales={list(inf.scales)}: need at least one positive scale")
    choose("inference.crf", inf.crf, CRF_CHOICES)
    check_speed_options(inf.precision, True, "inference")


def validate_segment_config(cfg: SegmentExperimentConfig) -> None:
    """Reject contradictory or out-of-range settings at start-up, naming the key."""
    m, t, a = cfg.model, cfg.train, cfg.augment
    if m.head not in HEADS:
        raise ConfigError(f"model.head={m.head!r}: choose one of {', '.join(HEADS)}")
    if m.output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"model.output_stride={m.output_stride}: choose 16 or 8")
    if any(r < 1 for r in m.aspp_rates):
        raise ConfigError(f"model.aspp_rates={list(m.aspp_rates)}: rates must be >= 1")
    if m.aspp_channels < 1 or m.low_level_channels < 1:
        raise ConfigError("model.aspp_channels and model.low_level_channels must be >= 1")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout}: must be in [0, 1)")
    if t.epochs < 1:
        raise ConfigError(f"train.epochs={t.epochs}: must be >= 1")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size={t.batch_size}: must be >= 1")
    check_speed_options(t.precision, t.amp, "train")
    if t.optimizer not in OPTIMIZERS:
        raise ConfigError(f"train.optimizer={t.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if t.sampling not in SAMPLINGS:
        raise ConfigError(f"train.sampling={t.sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if not 0 < t.repeat_threshold <= 1:
        raise ConfigError(f"train.repeat_threshold={t.repeat_threshold}: must be in (0, 1]")
    if not t.lr > 0 or not t.head_lr_mult > 0:
        raise ConfigError(f"train.lr={t.lr}, train.head_lr_mult={t.head_lr_mult}: must be > 0")
    if t.poly_power < 0:
        raise ConfigError(f"train.poly_power={t.poly_power}: must be >= 0")
    if t.weight_decay < 0 or not 0.0 <= t.momentum < 1.0:
        raise ConfigError(f"train.weight_decay={t.weight_decay}, train.momentum={t.momentum}: "
                          "need weight_decay >= 0 and 0 <= momentum < 1")
    lo, hi = a.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"augment.scale_range={list(a.scale_range)}: need 0 < low <= high")
    if a.crop_size < 16:
        raise ConfigError(f"augment.crop_size={a.crop_size}: must be >= 16")
    if not 0.0 <= a.hflip_prob <= 1.0:
        raise ConfigError(f"augment.hflip_prob={a.hflip_prob}: must be in [0, 1]")
    choose("train.select", t.select, SELECT_MODES)
    if t.select_every < 1 or t.select_images < 1:
        raise ConfigError(f"train.select_every={t.select_every}, train.select_images={t.select_images}: must be >= 1")
    if cfg.segment.mask_kind not in MASK_KINDS:
        raise ConfigError(f"segment.mask_kind={cfg.segment.mask_kind!r}: choose one of {', '.join(MASK_KINDS)}")
    validate_inference(cfg.inference)


def load_segment_config(name_or_path: str | None = None, overrides: Sequence[str] = ()) -> SegmentExperimentConfig:
    """Resolve a segmentation config: defaults <- YAML (shipped name or path) <- overrides."""
    return load_config(name_or_path, overrides, schema_class=SegmentExperimentConfig,
                       validate=validate_segment_config)


def segment_config_from_yaml(text: str, source: str = "stored config") -> SegmentExperimentConfig:
    """The config stored in a run folder or a model file's metadata (ConfigError naming ``source``)."""
    return config_from_yaml(text, SegmentExperimentConfig, source)
