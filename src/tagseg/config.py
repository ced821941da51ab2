"""Experiment configuration: dataclasses with defaults, YAML files, ``key=value`` overrides.

A config is resolved as: dataclass defaults <- shipped/explicit YAML <- command-line overrides.
Shipped experiments live in ``tagseg/configs/<name>.yaml`` and are referred to by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tagseg.errors import ConfigError


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

    family: which kind of network ('patch' = the patch-classifier family; see tagseg.families).
    """

    family: str = "patch"
    # CNN encoders only: 'dilated' runs the whole network with its last stages dilated so the
    # deepest (most semantic) map has stride 16; 'cut' stops at the stride-16 stage (cheaper).
    cnn_grid: str = "dilated"
    encoder: str = "vit_base_patch16_384"
    weights: Optional[str] = None  # local .pth/.safetensors/.npz, or 'lite' (tagseg[lite])
    pretrained: bool = False  # timm hub weights (needs internet)
    use_lstm: bool = True
    lstm_hidden: int = 192  # per direction; output is 4*hidden (rows + columns, both ways)
    dropout: float = 0.2  # on the grid before the LSTMs and before the classifier
    classifier_init_std: float = 0.05


@dataclass
class MethodConfig:
    """Pooling and losses (METHODS.md §1). TKP-PCL = topk + PCE (+ ET); ViT-PCM = max + ET."""

    pooling: str = "topk"  # avg | max | topk
    topk: int = 6
    pce_weight: float = 0.01  # λ; 0 disables PCE
    pce_threshold: float = 0.85  # τ_h
    pce_num_low: int = 1  # size of the low-confidence set (1 = argmin)
    et_weight: float = 1.0  # 0 disables L_ET (no second view, no mosaic pass)
    et_crop_prob: float = 0.3
    et_crop_size: int = 128  # pixels of the S×S view A; multiple of the patch size
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


@dataclass
class TrainConfig:
    """Optimisation schedule: Adam, warm-up with the backbone frozen, then the last blocks."""

    epochs: int = 50
    warmup_epochs: int = 2
    warmup_lr: float = 1e-3
    lr: float = 1e-4
    unfreeze_blocks: int = 5  # last N encoder blocks (+ final norm) trained after warm-up; -1 = all
    batch_size: int = 16
    weight_decay: float = 0.0
    amp: bool = True  # bf16 autocast on GPU (ignored on CPU)
    grad_clip: float = 0.0
    log_every: int = 10  # steps between TensorBoard scalar writes
    keep_checkpoints: int = 2
    cpu_threads: int = 0  # CPU intra-op threads; 0 = auto (cores minus data-loader workers, at least 1)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class PseudoConfig:
    """Pseudo-mask generation (METHODS.md §1, "Pseudo-masks")."""

    image_size: int = 960  # inference input (square) at scale 1.0
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False  # average with the horizontally flipped image
    save_probs: bool = False  # also write merged class probabilities (.npz, float16)
    batch_size: int = 1
    crf: str = "none"  # none | torch | pydensecrf: also write CRF-refined masks (<out>/crf/masks)
    crf_preset: str = "patch"  # CRF parameter set (METHODS.md §5): patch | cam | segmentation
    bg_threshold: float = 0.25  # CAM family: constant background score against the max-normalised CAMs


@dataclass
class CAMConfig:
    """The CAM family (METHODS.md §2): backbone -> 1×1 conv to K−1 maps -> GAP -> soft-margin loss."""

    # 16 or 8: CNNs run whole, their last stages dilated to this stride (timm output_stride); at 16 a
    # ViT, or a CNN without that option, gives its plain stride-16 grid instead; 8 needs a dilatable CNN
    output_stride: int = 16
    inference_cam: str = "auto"  # auto (RCA on: aggregated head, else base) | base | aggregated


@dataclass
class PPCAddonConfig:
    """Pixel-to-prototype contrast (METHODS.md §2); CAM family and patch family."""

    enabled: bool = False
    proj_dim: int = 128
    view2_size: int = 128  # px; multiple of 16
    bg_score: float = 0.2  # constant background score of PPC's pseudo labels (CAM family)
    top_k: int = 32  # K_p: pixels per prototype
    temperature: float = 0.1
    cross_weight: float = 0.1
    intra_weight: float = 0.1
    hard_negative_fraction: float = 0.6
    negative_keep_fraction: float = 0.5
    negative_selection: str = "random"  # random | less_hard
    hard_pixel_fraction: float = 0.5
    max_pixels_per_class: Optional[int] = None


@dataclass
class HFPLAddonConfig:
    """Importance sampling (ISL) and feature similarity (FSL) (METHODS.md §3).

    ISL: CAM family L_cls = (1−λ)·BCE(GAP) + λ·ISL; patch family (1−λ)·MCE(pooling) +
    λ·MCE(importance pooling). FSL: CAM family only.
    """

    isl: bool = False
    fsl: bool = False
    lam: float = 0.2
    n_samples: int = 10  # N
    sigma: float = 5.0
    mu: float = 2.5
    fsl_weight: float = 1.0
    block: int = 1024  # map cells per block of the FSL pair sums
    window: Optional[float] = None  # FSL pairs within window·σ cells; None = all pairs (exact)


@dataclass
class RCAAddonConfig:
    """Regional semantic contrast and aggregation (METHODS.md §4).

    CAM family: memory bank, region mixup contrast, k-means prototypes and the aggregation head.
    Patch family: the region contrast on patch features only (no aggregation head).
    """

    enabled: bool = False
    capacity: int = 500  # regions per class in the memory bank
    momentum: float = 0.99  # γ
    score_threshold: float = 0.7  # ν
    temperature: float = 0.07
    mixup_alpha: float = 8.0  # ω ~ Beta(a, a)
    prototypes_per_class: int = 10
    kmeans_iters: int = 50
    aux_weight: float = 0.4  # L_CE(GAP(P)) (CAM family)
    contrast_weight: float = 0.01  # L_RM
    contrast_start_epoch: int = 1  # 0-based: L_RM off in the first epoch


@dataclass
class AddonsConfig:
    """Switchable add-ons: each is turned on by one key (ppc.enabled, hfpl.isl, hfpl.fsl, rca.enabled)."""

    ppc: PPCAddonConfig = field(default_factory=PPCAddonConfig)
    hfpl: HFPLAddonConfig = field(default_factory=HFPLAddonConfig)
    rca: RCAAddonConfig = field(default_factory=RCAAddonConfig)


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    cam: CAMConfig = field(default_factory=CAMConfig)
    addons: AddonsConfig = field(default_factory=AddonsConfig)


def shipped_configs() -> list[str]:
    """Names of the experiment configs shipped with the package."""
    files = resources.files("tagseg") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def _config_source(name_or_path: str) -> str:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path.read_text()
    ref = resources.files("tagseg") / "configs" / f"{name_or_path}.yaml"
    if not ref.is_file():
        raise ConfigError(f"unknown config {name_or_path!r}; shipped configs: {', '.join(shipped_configs())}")
    return ref.read_text()


def load_config(name_or_path: str | None = None, overrides: Sequence[str] = (),
                schema_class: type = None, validate: Any = None) -> Any:
    """Resolve defaults <- YAML (a shipped name or a path) <- ``key=value`` overrides.

    schema_class: the dataclass to resolve into (default :class:`ExperimentConfig`, validated by
    :func:`validate_config`; other schemas pass their own ``validate``). Unknown keys and values
    of the wrong type raise ConfigError naming the key.
    """
    if schema_class is None:
        schema_class, validate = ExperimentConfig, validate_config
    schema = OmegaConf.structured(schema_class)
    try:
        merged = schema
        if name_or_path:
            merged = OmegaConf.merge(merged, OmegaConf.create(_config_source(name_or_path)))
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    if validate is not None:
        validate(cfg)
    return cfg


def config_to_yaml(cfg: Any) -> str:
    """The resolved config (any config dataclass) as YAML text (saved beside every run's outputs)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_yaml(text: str, schema_class: type = None) -> Any:
    """Inverse of :func:`config_to_yaml` (default schema: :class:`ExperimentConfig`)."""
    merged = OmegaConf.merge(OmegaConf.structured(schema_class or ExperimentConfig), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_dict(cfg: Any) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def validate_config(cfg: ExperimentConfig) -> None:
    """Reject contradictory or out-of-range settings at start-up, naming the key."""
    from tagseg.families import get_family

    get_family(cfg.model.family)  # ConfigError naming the known families
    if cfg.model.cnn_grid not in ("dilated", "cut"):
        raise ConfigError(f"model.cnn_grid={cfg.model.cnn_grid!r}: choose dilated or cut")
    m, d, t = cfg.method, cfg.data, cfg.train
    if m.pooling not in ("avg", "max", "topk"):
        raise ConfigError(f"method.pooling={m.pooling!r}: choose avg, max or topk")
    if m.topk < 1:
        raise ConfigError(f"method.topk={m.topk}: must be >= 1")
    if not 0.0 <= m.pce_threshold < 1.0:
        raise ConfigError(f"method.pce_threshold={m.pce_threshold}: must be in [0, 1)")
    if m.pce_num_low < 1:
        raise ConfigError(f"method.pce_num_low={m.pce_num_low}: must be >= 1")
    for key in ("pce_weight", "et_weight", "l2_weight"):
        if getattr(m, key) < 0:
            raise ConfigError(f"method.{key}={getattr(m, key)}: must be >= 0")
    if d.dataset not in ("voc", "folder", "synthetic"):
        raise ConfigError(f"data.dataset={d.dataset!r}: choose voc, folder or synthetic")
    if d.image_size % 16:
        raise ConfigError(f"data.image_size={d.image_size}: must be a multiple of 16 (the patch size)")
    if m.et_weight > 0:
        if d.image_size % 32:
            raise ConfigError(f"data.image_size={d.image_size}: L_ET needs a multiple of 32 "
                              "(view B is S/2 and must stay on the patch grid)")
        if m.et_crop_size % 16 or not 16 <= m.et_crop_size <= d.image_size:
            raise ConfigError(f"method.et_crop_size={m.et_crop_size}: must be a multiple of 16 "
                              f"between 16 and data.image_size={d.image_size}")
        if not 0.0 <= m.et_crop_prob <= 1.0:
            raise ConfigError(f"method.et_crop_prob={m.et_crop_prob}: must be in [0, 1]")
    if t.epochs < 1 or t.warmup_epochs < 0 or t.warmup_epochs > t.epochs:
        raise ConfigError(f"train.epochs={t.epochs}, train.warmup_epochs={t.warmup_epochs}: "
                          "need epochs >= 1 and 0 <= warmup_epochs <= epochs")
    if t.batch_size < 1:
        raise ConfigError(f"train.batch_size={t.batch_size}: must be >= 1")
    if cfg.pseudo.image_size % 16:
        raise ConfigError(f"pseudo.image_size={cfg.pseudo.image_size}: must be a multiple of 16")
    if cfg.pseudo.crf not in ("none", "torch", "pydensecrf"):
        raise ConfigError(f"pseudo.crf={cfg.pseudo.crf!r}: choose none, torch or pydensecrf")
    if cfg.pseudo.crf_preset not in ("patch", "cam", "segmentation"):
        raise ConfigError(f"pseudo.crf_preset={cfg.pseudo.crf_preset!r}: choose patch, cam or segmentation")
    if not cfg.pseudo.scales or any(s <= 0 for s in cfg.pseudo.scales):
        raise ConfigError(f"pseudo.scales={cfg.pseudo.scales}: need positive scales")
    if not 0.0 <= cfg.pseudo.bg_threshold <= 1.0:
        raise ConfigError(f"pseudo.bg_threshold={cfg.pseudo.bg_threshold}: must be in [0, 1]")
    validate_family_and_addons(cfg)


# Which add-on each family can serve (METHODS.md §2-4); 'ppc', 'isl', 'fsl', 'rca'.
ADDONS_BY_FAMILY: dict[str, tuple[str, ...]] = {
    "cam": ("ppc", "isl", "fsl", "rca"),
    "patch": ("ppc", "isl", "rca"),
}
_ADDON_KEYS = {"ppc": "addons.ppc.enabled", "isl": "addons.hfpl.isl", "fsl": "addons.hfpl.fsl",
               "rca": "addons.rca.enabled"}


def enabled_addons(cfg: ExperimentConfig) -> list[str]:
    """The add-ons switched on in ``cfg``, in the order ppc, isl, fsl, rca."""
    a = cfg.addons
    on = {"ppc": a.ppc.enabled, "isl": a.hfpl.isl, "fsl": a.hfpl.fsl, "rca": a.rca.enabled}
    return [name for name, flag in on.items() if flag]


def validate_family_and_addons(cfg: ExperimentConfig) -> None:
    """Reject add-ons on a family that cannot serve them, out-of-range add-on settings and
    patch-family loss terms on the CAM family; every message names the key."""
    family = cfg.model.family
    served = ADDONS_BY_FAMILY.get(family, ())
    for name in enabled_addons(cfg):
        if name not in served:
            hint = "; FSL needs CAM score maps: use model.family=cam" if name == "fsl" else ""
            raise ConfigError(f"{_ADDON_KEYS[name]}=true: the {name.upper()} add-on is not available for "
                              f"model.family={family!r} (it serves: {', '.join(served) or 'none'}{hint})")
    c, m = cfg.cam, cfg.method
    if c.output_stride not in (8, 16):
        raise ConfigError(f"cam.output_stride={c.output_stride}: choose 16 or 8")
    if c.inference_cam not in ("auto", "base", "aggregated"):
        raise ConfigError(f"cam.inference_cam={c.inference_cam!r}: choose auto, base or aggregated")
    if family == "cam":
        wrong = [f"{k}={v}" for k, v, ok in (("method.pooling", m.pooling, m.pooling == "avg"),
                                             ("method.pce_weight", m.pce_weight, m.pce_weight == 0),
                                             ("method.et_weight", m.et_weight, m.et_weight == 0),
                                             ("method.l2_weight", m.l2_weight, m.l2_weight == 0)) if not ok]
        if wrong:
            raise ConfigError(f"model.family=cam uses GAP and the soft-margin loss only: {', '.join(wrong)} "
                              "(patch-family settings); set method.pooling=avg method.pce_weight=0 method.et_weight=0 "
                              "method.l2_weight=0 (the shipped cam_voc config does)")
        if c.inference_cam == "aggregated" and not cfg.addons.rca.enabled:
            raise ConfigError("cam.inference_cam=aggregated needs the RCA aggregation head: "
                              "set addons.rca.enabled=true")
    elif c.output_stride != 16:
        raise ConfigError(f"cam.output_stride={c.output_stride}: only the CAM family (model.family=cam) "
                          "has a stride-8 variant")
    elif c.inference_cam == "aggregated":
        raise ConfigError("cam.inference_cam=aggregated: only the CAM family has an aggregation head")
    _validate_addon_values(cfg)


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key}={value}: must be > 0")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value}: must be >= 0")


def _in_unit(key: str, value: float, low_open: bool = False, high_open: bool = False) -> None:
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ConfigError(f"{key}={value}: must be in {lo}0, 1{hi}")


def _validate_addon_values(cfg: ExperimentConfig) -> None:
    """Range checks of every add-on setting, whether or not the add-on is switched on."""
    p, h, r = cfg.addons.ppc, cfg.addons.hfpl, cfg.addons.rca
    _positive("addons.ppc.proj_dim", p.proj_dim)
    if p.view2_size < 16 or p.view2_size % 16:
        raise ConfigError(f"addons.ppc.view2_size={p.view2_size}: must be a positive multiple of 16")
    _in_unit("addons.ppc.bg_score", p.bg_score)
    _positive("addons.ppc.top_k", p.top_k)
    _positive("addons.ppc.temperature", p.temperature)
    _non_negative("addons.ppc.cross_weight", p.cross_weight)
    _non_negative("addons.ppc.intra_weight", p.intra_weight)
    _in_unit("addons.ppc.hard_negative_fraction", p.hard_negative_fraction, low_open=True)
    _in_unit("addons.ppc.negative_keep_fraction", p.negative_keep_fraction, low_open=True)
    _in_unit("addons.ppc.hard_pixel_fraction", p.hard_pixel_fraction)
    if p.negative_selection not in ("random", "less_hard"):
        raise ConfigError(f"addons.ppc.negative_selection={p.negative_selection!r}: choose random or less_hard")
    if p.max_pixels_per_class is not None:
        _positive("addons.ppc.max_pixels_per_class", p.max_pixels_per_class)

    _in_unit("addons.hfpl.lam", h.lam)
    if h.n_samples < 1:
        raise ConfigError(f"addons.hfpl.n_samples={h.n_samples}: importance sampling needs N >= 1 samples")
    _positive("addons.hfpl.sigma", h.sigma)
    if h.mu != h.mu or abs(h.mu) == float("inf"):
        raise ConfigError(f"addons.hfpl.mu={h.mu}: must be finite")
    _non_negative("addons.hfpl.fsl_weight", h.fsl_weight)
    _positive("addons.hfpl.block", h.block)
    if h.window is not None:
        _positive("addons.hfpl.window", h.window)

    if r.capacity < 1:
        raise ConfigError(f"addons.rca.capacity={r.capacity}: the memory bank needs room for at least 1 region "
                          "per class")
    _in_unit("addons.rca.momentum", r.momentum, high_open=True)
    _in_unit("addons.rca.score_threshold", r.score_threshold)
    _positive("addons.rca.temperature", r.temperature)
    _positive("addons.rca.mixup_alpha", r.mixup_alpha)
    _positive("addons.rca.prototypes_per_class", r.prototypes_per_class)
    _positive("addons.rca.kmeans_iters", r.kmeans_iters)
    _non_negative("addons.rca.aux_weight", r.aux_weight)
    _non_negative("addons.rca.contrast_weight", r.contrast_weight)
    if r.contrast_start_epoch < 0:
        raise ConfigError(f"addons.rca.contrast_start_epoch={r.contrast_start_epoch}: must be >= 0")
