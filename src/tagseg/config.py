"""Experiment configuration: dataclasses with defaults, YAML files, ``key=value`` overrides.

A config is resolved as: dataclass defaults <- shipped/explicit YAML <- command-line overrides.
Shipped experiments live in ``tagseg/configs/<name>.yaml`` and are referred to by name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tagseg.errors import ConfigError


# Allowed values of the settings that choose an implementation, declared once: the code that
# implements each (tagseg.data.build, tagseg.engine.phases, tagseg.inference.crf, the segmentation
# stage's inference) reads these tuples, and the checks below refuse anything else. They live here
# because this module may import nothing from tagseg, and every loader must refuse a bad value.
# px: the patch size of the built-in encoders (ViT-B/16 patches, CNNs cut at stride 16); a model
# family carries its own (tagseg.methods.family.Family.patch_size), which defaults to this
PATCH_SIZE = 16
DATASETS = ("voc", "coco", "folder", "synthetic")  # data.dataset: tagseg.data.build.build_index
BN_MODES = ("frozen", "adapt", "train")  # model.bn: tagseg.engine.phases.apply_bn_mode
CLASS_PRIORS = ("none", "zero", "tags")  # cam.class_prior
CRF_BACKENDS = ("torch", "pydensecrf")  # tagseg.inference.crf.dense_crf's backends
CRF_CHOICES = ("none", *CRF_BACKENDS)  # pseudo.crf, inference.crf, --crf: none = no CRF
POOLINGS = ("avg", "max", "topk")  # method.pooling: tagseg.methods.pooling.pool_patch_scores
PCE_REDUCTIONS = ("pair_mean", "class_sum")  # method.pce_reduction: tagseg.methods.pce
CNN_FEATURES = ("last_block", "head")  # model.cnn_features: tagseg.models.encoder.PatchEncoder
LSTM_INITS = ("keras", "torch")  # model.lstm_init: tagseg.models.hv_bilstm
LSTM_DROPOUT_MASKS = ("per_step", "per_direction", "shared")  # model.lstm_dropout_masks: tagseg.models.hv_bilstm
ET_CROP_CORNERS = ("official", "uniform")  # method.et_crop_corners: tagseg.data.views.TrainingViews
SELECT_MODES = ("last", "best")  # train.select (both stages): the engine's best-epoch hook
INFERENCE_CAMS = ("auto", "base", "aggregated")  # cam.inference_cam: tagseg.models.cam_net (auto: resolved at build)
OUTPUT_STRIDES = (16, 8)  # cam.output_stride, segment model.output_stride: tagseg.models.encoder
SEED_CRF_MODES = ("score", "label")  # refine.psa.seed_crf: tagseg.refine.labels.psa_seed_labels


def choose(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """ConfigError naming ``key`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: choose {', '.join(allowed[:-1])} or {allowed[-1]}")


@dataclass
class DataConfig:
    """Where images and labels come from.

    dataset: 'voc' (PASCAL VOC 2012 layout), 'folder' (images + labels CSV) or 'synthetic'
    (generated demo data, written to ``root``).
    """

    dataset: str = "voc"
    root: str = ""
    train_split: str = "train_aug"
    pseudo_split: str = "train_aug"  # images to make pseudo-masks for (and score)
    val_split: str = "val"
    label_source: str = "auto"  # voc: 'cls_labels' (cls_labels.npy), 'masks', or 'auto'
    mask_dir: str = "auto"  # voc: 'SegmentationClassAug', 'SegmentationClass' or 'auto'
    image_size: int = 384  # training input S (square); multiple of 32 when L_ET is on
    num_workers: int = 2
    max_images: int = 0  # >0: use only the first N ids of each split (quick runs)
    max_image_pixels: int = 89_478_485  # decompression-bomb guard: larger images (w*h) are refused
    synthetic_train: int = 320
    synthetic_val: int = 80
    synthetic_size: int = 160
    synthetic_seed: int = 0


@dataclass
class ModelConfig:
    """Patch encoder (timm) + HV-BiLSTM + softmax patch classifier (METHODS.md §1).

    family: which kind of network ('patch' = the patch-classifier family; see tagseg.methods.families).
    """

    family: str = "patch"
    # CNN encoders only: 'dilated' runs the whole network with its last stages dilated so the
    # deepest (most semantic) map has stride 16; 'cut' stops at the stride-16 stage (cheaper).
    cnn_grid: str = "dilated"
    # dilated CNN encoders only: 'last_block' = the output of the last block; 'head' = timm's
    # forward_features (EfficientNet: + 1×1 conv_head, BatchNorm, activation; a ResNet: the same map).
    # EfficientNet's last block ends in a linear BatchNorm, whose batch mean is pinned to its bias
    # under model.bn=adapt|train, so a bias-free CAM head cannot learn the class priors without 'head'.
    cnn_features: str = "last_block"
    encoder: str = "vit_base_patch16_384"
    weights: Optional[str] = None  # local .pth/.safetensors/.npz, or 'lite' (tagseg[lite])
    pretrained: bool = False  # timm hub weights (needs internet); weights='lite' or a file implies false
    # encoder BatchNorm: frozen (statistics and weights fixed where the encoder is frozen; statistics
    # fixed everywhere) | adapt (running statistics follow the training images over fixed weights) |
    # train (statistics and affine weights train in every phase). See tagseg.engine.phases.
    bn: str = "adapt"
    use_lstm: bool = True
    lstm_hidden: int = 192  # per direction; output is 4*hidden (rows + columns, both ways)
    dropout: float = 0.2  # on the grid before the LSTMs and before the classifier
    lstm_input_dropout: float = 0.2  # input dropout of each row / column LSTM (masks: model.lstm_dropout_masks)
    vit_dropout: float = 0.1  # patch family, ViT encoders: dropout after attention projection and in the MLP (timm proj_drop_rate); CNNs: unused
    # dropout layers of frozen encoder parts: true = active in training as in every block of the official
    # Keras ViT (freezing there only stops gradients); false = eval mode like the rest of a frozen part
    frozen_dropout: bool = True
    # HV-BiLSTM initialisation: keras (glorot-uniform input kernel, orthogonal recurrent kernel, forget-gate
    # bias 1, the official code's) | torch (PyTorch's default uniform +-1/sqrt(hidden))
    lstm_init: str = "keras"
    # LSTM input-dropout masks: per_step (the official code: TF2 Keras' fused LSTM drops each step's input
    # independently, forward and backward apart) | per_direction (one mask per sequence, drawn per
    # direction: Keras' documented LSTM(dropout)) | shared (one mask per sequence for both directions)
    lstm_dropout_masks: str = "per_step"
    classifier_init_std: float = 0.05


@dataclass
class MethodConfig:
    """Pooling and losses (METHODS.md §1). TKP-PCL = topk + PCE (+ ET); ViT-PCM = max + ET."""

    pooling: str = "topk"  # avg | max | topk
    topk: int = 6
    pce_weight: float = 0.01  # λ; 0 disables PCE
    pce_threshold: float = 0.85  # τ_h
    pce_num_low: int = 1  # size of the low-confidence set (1 = argmin)
    # how Eqs. 5-6 reduce over patch pairs (unstated in the paper; docs/CHOICES.md): pair_mean (each term
    # divided by its pair count) | class_sum (summed over the pairs of a class); both average over classes
    pce_reduction: str = "pair_mean"
    et_weight: float = 1.0  # 0 disables L_ET (no second view, no mosaic pass)
    et_crop_prob: float = 0.3
    et_crop_size: int = 128  # pixels of the S×S view A; multiple of the patch size
    # crop corner per axis: official (a multiple of the patch size drawn uniformly from 0..S, then clipped to
    # S - crop: the last valid corner gets the mass of every larger draw) | uniform (over the valid corners)
    et_crop_corners: str = "official"
    # view B's resizes (image and patch grid): bilinear with align_corners=True as the official code's
    # tf.compat.v1 resize; false = align_corners=False (a factor-2 reduction then averages 2×2 blocks)
    et_align_corners: bool = True
    l2_weight: float = 0.01


@dataclass
class AugmentConfig:
    """Photometric and geometric training augmentation (METHODS.md §1, "Schedule")."""

    contrast: tuple[float, float] = (0.5, 2.0)
    saturation: tuple[float, float] = (0.5, 1.5)
    hue: float = 0.1
    grayscale_prob: float = 0.1
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    transpose_prob: float = 0.5
    brightness: tuple[float, float] = (1.0, 1.0)
    # square: the image squashed to data.image_size (tagseg's recipe); resize_long_crop: the long side
    # resized to a random length in resize_long (bicubic), then a random data.image_size crop, padded
    # with the ImageNet mean colour where the image is smaller (the official CAM code's recipe)
    geometry: str = "square"
    resize_long: tuple[int, int] = (448, 768)


# train.lr_schedule values; each is built by tagseg.engine.schedule (a test checks every one builds):
# phases (warmup_epochs, warmup_lr, unfreeze_blocks), poly (poly_power), step (lr_decay_epochs, lr_decay_factor)
LR_SCHEDULES = ("phases", "poly", "step")


@dataclass
class TrainConfig:
    """Optimisation schedule: Adam, warm-up with the backbone frozen, then the last blocks."""

    epochs: int = 50
    warmup_epochs: int = 2
    warmup_lr: float = 1e-3
    lr: float = 1e-4
    unfreeze_blocks: int = 5  # last N encoder blocks (+ final norm) trained after warm-up; -1 = all
    batch_size: int = 16  # GLOBAL batch: under torchrun each of N processes takes batch_size / N (must divide)
    weight_decay: float = 0.0
    amp: bool = True  # older switch, replaced by precision: false = fp32 (with precision=auto)
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16 (autocast; fp16 + grad scaler)
    compile: bool = False  # torch.compile the training forward pass
    channels_last: bool = False  # NHWC memory for CNN backbones (GPU tensor cores)
    grad_clip: float = 0.0
    log_every: int = 10  # steps between TensorBoard scalar writes
    keep_checkpoints: int = 2
    cpu_threads: int = 0  # CPU intra-op threads; 0 = auto (cores minus data-loader workers, at least 1)
    # which epoch becomes model.safetensors: last | best (highest pseudo-mask mIoU on the first
    # select_images images of data.val_split, scored every select_every epochs and at the last one)
    select: str = "last"
    select_every: int = 1
    select_images: int = 100
    # optimizer adam: Adam with the warm-up/unfreeze phases (lr_schedule phases); sgd with
    # lr_schedule poly: the official CAM recipe, every layer trained from the first step, the lr
    # decayed per step as lr·(1 − t/T)^poly_power, the head at head_lr_mult × lr;
    # lr_schedule step: the lr constant within an epoch, × lr_decay_factor at each epoch (0-based)
    # listed in lr_decay_epochs (RCA's recipe), the head at head_lr_mult × lr
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    lr_schedule: str = "phases"  # one of LR_SCHEDULES
    poly_power: float = 0.9  # poly only
    lr_decay_epochs: list[int] = field(default_factory=list)  # step only
    lr_decay_factor: float = 0.1  # step only
    head_lr_mult: float = 1.0
    bias_lr_mult: float = 1.0  # SGD only: biases at bias_lr_mult × their group's lr (× head_lr_mult in the head)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PseudoConfig:
    """Pseudo-mask generation (METHODS.md §1, "Pseudo-masks")."""

    image_size: int = 960  # inference input (square) at scale 1.0
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False  # average with the horizontally flipped image
    save_probs: bool = False  # also write merged class probabilities (.npz, float16)
    batch_size: int = 1
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16: inference autocast
    channels_last: bool = False  # NHWC memory for CNN backbones
    crf: str = "none"  # none | torch | pydensecrf: also write CRF-refined masks (<out>/crf/masks)
    crf_preset: str = "patch"  # CRF parameter set (METHODS.md §5): patch | cam | segmentation
    bg_threshold: float = 0.25  # CAM family: constant background score against the max-normalised CAMs
    # patch family: input resize and probability upsampling bilinear with align_corners=True and no
    # antialiasing, as the official ViT-PCM test code; false = antialiased input, align_corners=False
    align_corners: bool = True


@dataclass
class CAMConfig:
    """The CAM family (METHODS.md §2): backbone -> 1×1 conv to K−1 maps -> GAP -> soft-margin loss."""

    # 16 or 8: CNNs run whole, their last stages dilated to this stride (timm output_stride); at 16 a
    # ViT, or a CNN without that option, gives its plain stride-16 grid instead; 8 needs a dilatable CNN
    output_stride: int = 16
    inference_cam: str = "auto"  # auto (RCA on: aggregated head, else base) | base | aggregated
    # a learnt per-class offset of the image logits (GAP of the CAMs + b), never added to the CAMs:
    # none (the official code's bias-free head) | zero (b starts at 0) | tags (b starts at the log-odds
    # of each class's frequency among the training tags). CAM and SEAM families. See docs/CHOICES.md.
    class_prior: str = "none"


# --- refinement stage (docs/METHODS.md §7): seeds -> refined pseudo-masks -------------------------

@dataclass
class PARConfig:
    """Pixel-adaptive refinement, training-free (ToCo ``model/PAR.py``, ``scripts/dist_train_voc_seg_neg.py``)."""

    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12, 24])
    num_iter: int = 10
    w1: float = 0.3  # colour-affinity temperature
    w2: float = 0.01  # weight of the position term
    high_thres: float = 0.7  # background score deciding foreground (ToCo VOC; COCO 0.65)
    low_thres: float = 0.25  # background score deciding background
    down_scale: int = 2  # PAR runs at 1/down_scale of the image


@dataclass
class IRNConfig:
    """IRN's class-boundary branch and random walk (jiwoon-ahn/irn ``run_sample.py`` defaults)."""

    fg_thres: float = 0.30  # conf_fg_thres: background score for the confident-foreground map
    bg_thres: float = 0.05  # conf_bg_thres: background score for the confident-background map
    label_gt_prob: float = 0.7  # label-unary CRF (misc/imutils.crf_inference_label)
    stride: int = 4  # boundary map and walk grid, in input pixels
    train_radius: int = 10  # pair radius in training (step/train_irn.py)
    crop_size: int = 512
    batch_size: int = 32
    epochs: int = 3
    lr: float = 0.1  # the boundary branch's (IRN: 1x for the edge layers, 10x only for the displacement branch)
    weight_decay: float = 1e-4
    radius: int = 5  # walk radius (step/make_sem_seg_labels.py)
    beta: float = 10
    exp_times: int = 8
    bg_thres_walk: float = 0.25  # sem_seg_bg_thres
    flip: bool = True  # boundary averaged with the flipped image's (EdgeDisplacement)


@dataclass
class PSAConfig:
    """AffinityNet (jiwoon-ahn/psa) with selectable defaults: ``preset: psa`` (PSA's
    ``infer_cls.py``/``train_aff.py``/``infer_aff.py``), ``seam`` (usr922/wseg ``aff_*``: label-unary
    CRF, α 4/24) or ``hfpl`` (arvijj/hfpl: score CRF, α 1/24). Keys left null take the preset's value."""

    preset: str = "psa"  # psa | seam | hfpl
    low_alpha: Optional[float] = None  # psa 4, seam 4, hfpl 1
    high_alpha: Optional[float] = None  # psa 32, seam 24, hfpl 24
    seed_crf: Optional[str] = None  # score (PSA, HFPL) | label (wseg aff_prepare.py)
    walk_alpha: Optional[float] = None  # background (1 - max)^α before the walk: psa 16, seam/hfpl 6
    beta: Optional[float] = None  # psa 8, seam 8, hfpl 8
    logt: Optional[int] = None  # psa 8, seam 6, hfpl 6
    lr: Optional[float] = None  # base lr: psa 0.1, seam/hfpl 0.01; the head (from scratch) trains at 10x
    weight_decay: float = 5e-4
    radius: int = 5
    stride: int = 8  # affinity grid (PSA: 1/8 of the input)
    crop_size: int = 448
    batch_size: int = 8
    epochs: int = 8


PSA_PRESETS: dict[str, dict[str, Any]] = {
    "psa": {"low_alpha": 4.0, "high_alpha": 32.0, "seed_crf": "score", "walk_alpha": 16.0, "beta": 8.0,
            "logt": 8, "lr": 0.1},
    "seam": {"low_alpha": 4.0, "high_alpha": 24.0, "seed_crf": "label", "walk_alpha": 6.0, "beta": 8.0,
             "logt": 6, "lr": 0.01},
    "hfpl": {"low_alpha": 1.0, "high_alpha": 24.0, "seed_crf": "score", "walk_alpha": 6.0, "beta": 8.0,
             "logt": 6, "lr": 0.01},
}
REFINE_METHODS = ("irn", "psa", "par")  # refine.method, refine --method; best published masks first
TRAINED_REFINE_METHODS = ("irn", "psa")  # the methods that train a network first (tagseg.refine.train)


@dataclass
class RefineConfig:
    """The refinement stage between pseudo and segment (docs/METHODS.md §7)."""

    method: str = "irn"  # irn | psa | par
    crf: str = "torch"  # backend of the seed-label CRFs: torch | pydensecrf
    par: PARConfig = field(default_factory=PARConfig)
    irn: IRNConfig = field(default_factory=IRNConfig)
    psa: PSAConfig = field(default_factory=PSAConfig)


def resolve_psa(cfg: PSAConfig) -> PSAConfig:
    """A copy of ``cfg`` with every null key filled from its preset."""
    if cfg.preset not in PSA_PRESETS:
        raise ConfigError(f"refine.psa.preset={cfg.preset!r}: choose one of {', '.join(PSA_PRESETS)}")
    values = {k: (getattr(cfg, k) if getattr(cfg, k) is not None else v) for k, v in PSA_PRESETS[cfg.preset].items()}
    return dataclasses.replace(cfg, **values)


def validate_refine(cfg: RefineConfig) -> None:
    """Out-of-range refinement settings, naming the key."""
    if cfg.method not in REFINE_METHODS:
        raise ConfigError(f"refine.method={cfg.method!r}: choose irn, psa or par")
    choose("refine.crf", cfg.crf, CRF_BACKENDS)
    p = cfg.par
    if not p.dilations or any(d < 1 for d in p.dilations):
        raise ConfigError(f"refine.par.dilations={p.dilations}: integers >= 1, at least one")
    if p.num_iter < 0 or p.down_scale < 1:
        raise ConfigError("refine.par.num_iter must be >= 0 and refine.par.down_scale >= 1")
    if not 0 <= p.low_thres <= p.high_thres:
        raise ConfigError(f"refine.par: need 0 <= low_thres ({p.low_thres}) <= high_thres ({p.high_thres})")
    i = cfg.irn
    if not 0 <= i.bg_thres <= i.fg_thres:
        raise ConfigError(f"refine.irn: need 0 <= bg_thres ({i.bg_thres}) <= fg_thres ({i.fg_thres})")
    if not 0 < i.label_gt_prob < 1:
        raise ConfigError(f"refine.irn.label_gt_prob={i.label_gt_prob}: must be in (0, 1)")
    for key in ("radius", "train_radius"):
        if getattr(i, key) < 2:
            raise ConfigError(f"refine.irn.{key}={getattr(i, key)}: must be >= 2")
    if not 0 <= i.exp_times <= 16:
        raise ConfigError(f"refine.irn.exp_times={i.exp_times}: must be in 0..16")
    s = resolve_psa(cfg.psa)
    choose("refine.psa.seed_crf", s.seed_crf, SEED_CRF_MODES)
    if not 0 <= s.low_alpha <= s.high_alpha:
        raise ConfigError(f"refine.psa: need 0 <= low_alpha ({s.low_alpha}) <= high_alpha ({s.high_alpha})")
    if s.radius < 2 or not 0 <= s.logt <= 16:
        raise ConfigError("refine.psa.radius must be >= 2 and refine.psa.logt in 0..16")


@dataclass
class SEAMConfig:
    """model.family=seam (SEAM, CVPR 2020; defaults from YudeWang/SEAM train_SEAM.py and
    network/resnet38_SEAM.py): view 2 is view 1 resized by ``view2_scale`` (snapped to a multiple
    of 16); Dropout2d before the CAM head; ECR averages the top ``ecr_fraction`` of its entries."""

    view2_scale: float = 0.3
    head_dropout: float = 0.5
    ecr_fraction: float = 0.2


@dataclass
class RunConfig:
    """The part every stage's run configuration shares (top-level YAML keys name, seed, device and
    the data section); each stage's schema extends it with its own sections."""

    name: str = "experiment"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)


@dataclass
class ExperimentConfig(RunConfig):
    """The tag classifier's run (classify, pseudo, refine, evaluate)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    cam: CAMConfig = field(default_factory=CAMConfig)
    seam: SEAMConfig = field(default_factory=SEAMConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    # add-on sections by name (addons.ppc, addons.hfpl, addons.rca, ...): free-form here, turned into
    # each add-on's own settings (and checked key by key) by tagseg.addons.registry.resolve_addons
    addons: dict[str, Any] = field(default_factory=dict)


def shipped_configs() -> list[str]:
    """Names of the experiment configs shipped with the package."""
    files = resources.files("tagseg") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _config_source(name_or_path: str) -> str:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    ref = resources.files("tagseg") / "configs" / f"{name_or_path}.yaml"
    if not ref.is_file():
        raise ConfigError(f"unknown config {name_or_path!r}; shipped configs: {', '.join(shipped_configs())}")
    return ref.read_text()


_PART_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
MAX_DEFAULTS_DEPTH = 8


def _default_source(item: Any, including: str) -> str:
    """Where one ``defaults`` entry of ``including`` is: a shipped part (``method/tkpcl``,
    ``data/voc``, or any shipped name) or a ``.yaml`` file beside the including file."""
    if not isinstance(item, str) or not item.strip():
        raise ConfigError(f"{including}: defaults entries are config names or .yaml files, got {item!r}")
    if item.endswith((".yaml", ".yml")):
        base = Path(including).parent if Path(including).suffix in (".yaml", ".yml") else None
        if base is None:
            raise ConfigError(f"{including}: a shipped config can only list shipped parts in defaults, got {item!r}")
        path = (base / item)
        if ".." in Path(item).parts or Path(item).is_absolute():
            raise ConfigError(f"{including}: defaults entry {item!r} must be a file in its own folder or below")
        return str(path)
    if ".." in item.split("/") or not _PART_NAME.match(item):
        raise ConfigError(f"{including}: defaults entry {item!r} is not a config name (e.g. method/tkpcl, data/voc)")
    return item


def compose_yaml(name_or_path: str, _chain: tuple[str, ...] = ()) -> Any:
    """The OmegaConf mapping of a config after its ``defaults``: each listed part (in order, each
    composed the same way), then the file's own keys on top. ConfigError for a cycle, a missing
    part or a malformed list, naming the file."""
    if name_or_path in _chain or len(_chain) >= MAX_DEFAULTS_DEPTH:
        raise ConfigError(f"config defaults form a cycle or nest too deep: {' -> '.join((*_chain, name_or_path))}")
    node = parse_yaml(_config_source(name_or_path), name_or_path)
    defaults = node.pop("defaults", None) if "defaults" in node else None
    if defaults is None:
        return node
    if not OmegaConf.is_list(defaults):
        raise ConfigError(f"{name_or_path}: defaults must be a list of config names (e.g. [method/tkpcl, data/voc])")
    parts = [compose_yaml(_default_source(item, name_or_path), (*_chain, name_or_path))
             for item in OmegaConf.to_container(defaults)]
    return OmegaConf.merge(*parts, node) if parts else node


# Top-level sections only a segmentation-stage config has (tagseg.segment.config's schema); the
# tag classifier's schema has neither.
SEGMENT_SECTIONS = ("segment", "inference")


def is_segment_config(name_or_path: str) -> bool:
    """Whether a config (a shipped name or a YAML path, after its ``defaults``) is for the
    segmentation stage, read from its sections (:data:`SEGMENT_SECTIONS`), whatever its file name."""
    node = compose_yaml(name_or_path)
    return any(section in node for section in SEGMENT_SECTIONS)


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = (),
                schema_class: type = None, validate: Any = None) -> Any:
    """Resolve defaults <- YAML (a shipped name or a path) <- ``key=value`` overrides.

    A YAML file may start from other configs: ``defaults: [method/tkpcl, data/voc]`` merges those
    shipped parts (or ``.yaml`` files beside it) in order, then its own keys
    (:func:`compose_yaml`).

    schema_class: the dataclass to resolve into (default :class:`ExperimentConfig`, validated by
    :func:`validate_config`; other schemas pass their own ``validate``). Unknown keys and values
    of the wrong type raise ConfigError naming the key. The model family and the add-on sections
    are checked (and the add-on sections typed) by :func:`tagseg.experiment.load_experiment`.
    """
    if schema_class is None:
        schema_class, validate = ExperimentConfig, validate_config
    schema = OmegaConf.structured(schema_class)
    try:
        merged = schema
        if name_or_path:
            merged = OmegaConf.merge(merged, compose_yaml(name_or_path))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {one_line(exc)}") from exc
    except yaml.YAMLError as exc:  # a key=value override whose value is not YAML
        raise ConfigError(f"invalid override: {yaml_message(exc)}") from exc
    check_numbers(cfg)
    if validate is not None:
        validate(cfg)
    return cfg


# The keys a verb that reads a finished run or model applies (a section name covers all its keys);
# every other key is fixed by the trained model and refused rather than silently ignored.
VERB_APPLIES: dict[str, tuple[str, ...]] = {
    "pseudo": ("device", "data", "pseudo"),
    "eval": ("device", "data"),
    "eval --sweep-bg": ("device", "data", "pseudo"),
    "segment eval": ("device", "data", "inference"),
    "predict": ("inference",),
    "report": ("data",),
    "refine": ("device", "data", "pseudo", "refine"),
}


def override_key(item: str) -> str:
    """The dotted key of a ``key=value`` override (ConfigError when it has no ``=``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    return item.split("=", 1)[0].strip().lstrip("+~")


def check_verb_overrides(verb: str, overrides: Sequence[str]) -> None:
    """ConfigError naming the key and the verb for an override that ``verb`` would not apply
    (:data:`VERB_APPLIES`), e.g. ``model.bn=frozen`` given to ``pseudo``, whose model file fixes it."""
    applies = VERB_APPLIES[verb]
    for item in overrides:
        key = override_key(item)
        if not any(key == a or key.startswith(a + ".") for a in applies):
            takes = ", ".join("device=..." if a == "device" else f"{a}.key=value" for a in applies)
            raise ConfigError(f"{key} is not applied by `tagseg {verb}`: it takes only {takes} overrides "
                              "(the trained model fixes the rest)")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (YAML and OmegaConf messages span several)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def yaml_message(exc: Exception) -> str:
    """A YAML parser error on one line: what is wrong and where (line, column)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        text = " ".join(p for p in (exc.context, exc.problem) if p) + where
        if "python/" in text:
            text += " (configs are plain data: Python tags are refused)"
        return one_line(text)
    return one_line(exc)


def parse_yaml(text: str, source: str = "config") -> Any:
    """YAML text -> an OmegaConf mapping; ConfigError naming ``source`` for text that is not
    YAML, is not a mapping, or uses a tag (``!!python/...``) that safe loading refuses."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {yaml_message(exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections (key: value), "
                          f"got a {type(data).__name__}")
    try:
        return OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except (yaml.YAMLError, OmegaConfBaseException, ValueError, TypeError) as exc:
        if "expansion exceeds" in str(exc):  # omegaconf >= 2.4's alias-bomb guard; its hint on lifting it is not ours
            found = re.search(r"limit of (\d+)", str(exc))
            limit = f" ({found.group(1)} nodes)" if found else ""
            raise ConfigError(f"{source}: its YAML aliases expand beyond the limit{limit} (an alias bomb?); "
                              "configs are plain data, write the values out") from exc
        raise ConfigError(f"{source}: unusable YAML: {yaml_message(exc)}") from exc


# Ranges of numeric settings (inclusive; lr-like ones must be > 0). A key missing from a schema
# is skipped, so one table serves every config schema that shares these section names.
MAX_SIDE = 8192  # pixels: image/crop sizes
MAX_COUNT = 10**6  # epochs, images, steps, ...
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, 2**31 - 1),
    "data.image_size": (16, MAX_SIDE), "data.num_workers": (0, 256), "data.max_images": (0, 10**9),
    "data.synthetic_train": (0, MAX_COUNT), "data.synthetic_val": (0, MAX_COUNT),
    "data.synthetic_size": (16, MAX_SIDE), "data.synthetic_seed": (0, 2**31 - 1),
    "model.lstm_hidden": (1, 65536), "model.dropout": (0, 1), "model.classifier_init_std": (0, 10),
    "model.output_stride": (1, 64), "model.aspp_channels": (1, 65536), "model.low_level_channels": (1, 65536),
    "method.topk": (1, 10**6), "method.et_crop_size": (16, MAX_SIDE), "method.pce_num_low": (1, 10**6),
    "train.epochs": (1, MAX_COUNT), "train.warmup_epochs": (0, MAX_COUNT), "train.batch_size": (1, 65536),
    "train.unfreeze_blocks": (-1, 10**4), "train.weight_decay": (0, 10), "train.grad_clip": (0, 10**6),
    "train.log_every": (0, 10**9), "train.keep_checkpoints": (0, 10**6), "train.cpu_threads": (0, 1024),
    "train.momentum": (0, 1), "train.poly_power": (0, 100), "train.head_lr_mult": (0, 10**4),
    "pseudo.image_size": (16, MAX_SIDE), "pseudo.batch_size": (1, 65536),
    "augment.crop_size": (16, MAX_SIDE),
}
LEARNING_RATES = ("train.lr", "train.warmup_lr")  # must lie in (0, MAX_LR]
MAX_LR = 10.0
MAX_ABS_FLOAT = 1e6  # any other float setting beyond this is a typo, not a setting
MAX_ABS_INT = 2**31 - 1  # likewise for integers (sizes and counts have tighter ranges above)


def check_numbers(cfg: Any) -> None:
    """Reject non-finite or absurd numbers anywhere in a config, naming the key.

    Every float must be finite; learning rates must lie in (0, MAX_LR]; the settings in
    NUMBER_RANGES (sizes, counts, workers, threads, ...) within their range; any other float
    within ±MAX_ABS_FLOAT and integer within ±MAX_ABS_INT. Runs before the schema's own
    validation, so that never sees NaN or inf.
    """
    for key, value in _flat_numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value}: must be a finite number")
        if key in LEARNING_RATES:
            if not 0 < value <= MAX_LR:
                raise ConfigError(f"{key}={value:g}: a learning rate must be in (0, {MAX_LR:g}]")
        elif key in NUMBER_RANGES:
            low, high = NUMBER_RANGES[key]
            if not low <= value <= high:
                raise ConfigError(f"{key}={value:g}: must be between {low:g} and {high:g}")
        elif abs(value) > (MAX_ABS_FLOAT if isinstance(value, float) else MAX_ABS_INT):
            limit = MAX_ABS_FLOAT if isinstance(value, float) else MAX_ABS_INT
            raise ConfigError(f"{key}={value:g}: out of range (|value| <= {limit:g})")


def _flat_numbers(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if is_dataclass(cfg):
        for f in fields(cfg):
            yield from _flat_numbers(getattr(cfg, f.name), f"{prefix}{f.name}.")
    elif isinstance(cfg, dict):  # free-form sections (the add-ons) before the registry types them
        for k, v in cfg.items():
            yield from _flat_numbers(v, f"{prefix}{k}.")
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            yield from _flat_numbers(v, f"{prefix[:-1]}[{i}].")
    elif isinstance(cfg, (int, float)) and not isinstance(cfg, bool):
        yield prefix[:-1], cfg


def config_to_yaml(cfg: Any) -> str:
    """The resolved config (any config dataclass) as YAML text (saved beside every run's outputs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str, schema_class: type = None, source: str = "stored config") -> Any:
    """Inverse of :func:`config_to_yaml` (default schema: :class:`ExperimentConfig`); ConfigError
    naming ``source`` (e.g. a model file) if the text is not a valid config."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_class or ExperimentConfig), parse_yaml(text, source))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: invalid configuration: {one_line(exc)}") from exc
    try:
        check_numbers(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    return cfg


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_speed_options(precision: str, amp: bool, section: str) -> None:
    """ConfigError naming the key for an unknown ``<section>.precision`` or one that contradicts
    the older ``train.amp`` switch (amp=false means fp32; precision replaces it)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{section}.precision={precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not amp and precision not in ("auto", "fp32"):
        raise ConfigError(f"train.amp=false contradicts {section}.precision={precision}: train.amp is replaced "
                          f"by {section}.precision (fp32 | bf16 | fp16); drop train.amp")


def validate_config(cfg: ExperimentConfig) -> None:
    """Reject contradictory or out-of-range settings at start-up, naming the key.

    Only the checks that need nothing but this module; the model family and the add-ons are
    checked by :func:`tagseg.experiment.validate_experiment`.
    """
    if cfg.model.weights is not None and cfg.model.pretrained:
        cfg.model.pretrained = False  # a local file or 'lite' is the pretraining: no hub download on top
    for key in ("dropout", "lstm_input_dropout", "vit_dropout"):
        if not 0.0 <= getattr(cfg.model, key) < 1.0:
            raise ConfigError(f"model.{key}={getattr(cfg.model, key)}: must be in [0, 1)")
    choose("model.bn", cfg.model.bn, BN_MODES)
    choose("model.cnn_features", cfg.model.cnn_features, CNN_FEATURES)
    choose("model.lstm_init", cfg.model.lstm_init, LSTM_INITS)
    choose("model.lstm_dropout_masks", cfg.model.lstm_dropout_masks, LSTM_DROPOUT_MASKS)
    if cfg.model.cnn_grid not in ("dilated", "cut"):
        raise ConfigError(f"model.cnn_grid={cfg.model.cnn_grid!r}: choose dilated or cut")
    m, d, t = cfg.method, cfg.data, cfg.train
    choose("method.pooling", m.pooling, POOLINGS)
    if m.topk < 1:
        raise ConfigError(f"method.topk={m.topk}: must be >= 1")
    if not 0.0 <= m.pce_threshold < 1.0:
        raise ConfigError(f"method.pce_threshold={m.pce_threshold}: must be in [0, 1)")
    choose("method.pce_reduction", m.pce_reduction, PCE_REDUCTIONS)
    if m.pce_num_low < 1:
        raise ConfigError(f"method.pce_num_low={m.pce_num_low}: must be >= 1")
    for key in ("pce_weight", "et_weight", "l2_weight"):
        if getattr(m, key) < 0:
            raise ConfigError(f"method.{key}={getattr(m, key)}: must be >= 0")
    choose("data.dataset", d.dataset, DATASETS)
    # sizes against the patch size are the family's: tagseg.experiment.validate_experiment
    if m.et_weight > 0:
        choose("method.et_crop_corners", m.et_crop_corners, ET_CROP_CORNERS)
        if not 0.0 <= m.et_crop_prob <= 1.0:
            raise ConfigError(f"method.et_crop_prob={m.et_crop_prob}: must be in [0, 1]")
    if t.epochs < 1 or t.warmup_epochs < 0 or t.warmup_epochs > t.epochs:
        raise ConfigError(f"train.epochs={t.epochs}, train.warmup_epochs={t.warmup_epochs}: "
                          "need epochs >= 1 and 0 <= warmup_epochs <= epochs")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size={t.batch_size}: must be >= 1")
    choose("train.select", t.select, SELECT_MODES)
    if t.optimizer not in ("adam", "sgd"):
        raise ConfigError(f"train.optimizer={t.optimizer!r}: choose adam or sgd")
    if t.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"train.lr_schedule={t.lr_schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if any(e < 1 for e in t.lr_decay_epochs) or list(t.lr_decay_epochs) != sorted(set(t.lr_decay_epochs)):
        raise ConfigError(f"train.lr_decay_epochs={list(t.lr_decay_epochs)}: need increasing epochs >= 1")
    if not 0.0 < t.lr_decay_factor <= 1.0 or not t.bias_lr_mult > 0:
        raise ConfigError(f"train.lr_decay_factor={t.lr_decay_factor}, train.bias_lr_mult={t.bias_lr_mult}: "
                          "need 0 < lr_decay_factor <= 1 and bias_lr_mult > 0")
    if not t.head_lr_mult > 0 or t.poly_power < 0 or not 0.0 <= t.momentum < 1.0:
        raise ConfigError(f"train.head_lr_mult={t.head_lr_mult}, train.poly_power={t.poly_power}, "
                          f"train.momentum={t.momentum}: need head_lr_mult > 0, poly_power >= 0, 0 <= momentum < 1")
    a = t.augment
    if a.geometry not in ("square", "resize_long_crop"):
        raise ConfigError(f"train.augment.geometry={a.geometry!r}: choose square or resize_long_crop")
    if a.geometry == "resize_long_crop":
        lo, hi = a.resize_long
        if not 16 <= lo <= hi <= MAX_SIDE:
            raise ConfigError(f"train.augment.resize_long={list(a.resize_long)}: need 16 <= low <= high <= {MAX_SIDE}")
        if m.et_weight > 0:
            raise ConfigError("train.augment.geometry=resize_long_crop does not provide L_ET's view B: "
                              "use geometry=square with method.et_weight > 0")
    if not 0.0 < a.brightness[0] <= a.brightness[1]:
        raise ConfigError(f"train.augment.brightness={list(a.brightness)}: need 0 < low <= high")
    if t.select_every < 1 or t.select_images < 1:
        raise ConfigError(f"train.select_every={t.select_every}, train.select_images={t.select_images}: must be >= 1")
    check_speed_options(t.precision, t.amp, "train")
    check_speed_options(cfg.pseudo.precision, True, "pseudo")
    validate_refine(cfg.refine)
    choose("pseudo.crf", cfg.pseudo.crf, CRF_CHOICES)
    if cfg.pseudo.crf_preset not in ("patch", "cam", "segmentation"):
        raise ConfigError(f"pseudo.crf_preset={cfg.pseudo.crf_preset!r}: choose patch, cam or segmentation")
    if not cfg.pseudo.scales or any(s <= 0 for s in cfg.pseudo.scales):
        raise ConfigError(f"pseudo.scales={cfg.pseudo.scales}: need positive scales")
    if not 0.0 <= cfg.pseudo.bg_threshold <= 1.0:
        raise ConfigError(f"pseudo.bg_threshold={cfg.pseudo.bg_threshold}: must be in [0, 1]")
    c = cfg.cam
    if c.output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"cam.output_stride={c.output_stride}: choose 16 or 8")
    choose("cam.inference_cam", c.inference_cam, INFERENCE_CAMS)
    choose("cam.class_prior", c.class_prior, CLASS_PRIORS)
    if c.class_prior != "none" and cfg.model.family not in ("cam", "seam"):
        raise ConfigError(f"cam.class_prior={c.class_prior} is a setting of the CAM families (cam, seam); "
                          f"model.family={cfg.model.family} has no such term: set cam.class_prior=none")
    s = cfg.seam
    if not 0.0 < s.view2_scale <= 1.0:
        raise ConfigError(f"seam.view2_scale={s.view2_scale}: must be in (0, 1]")
    if not 0.0 <= s.head_dropout < 1.0:
        raise ConfigError(f"seam.head_dropout={s.head_dropout}: must be in [0, 1)")
    if not 0.0 < s.ecr_fraction <= 1.0:
        raise ConfigError(f"seam.ecr_fraction={s.ecr_fraction}: must be in (0, 1]")
