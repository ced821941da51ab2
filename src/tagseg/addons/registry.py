"""The add-on registry: each add-on is one module that declares an :class:`Addon` and registers it here.

An add-on declares its config dataclass (every key of its ``addons.<name>`` section, switches
included), the family **capabilities** each switch requires (:data:`CAPABILITIES`; a family
declares the ones it offers, :func:`check_capabilities` refuses the rest) and its hooks:

- ``attach(settings, ctx)``: its module for a freshly built network (or None); the network keeps
  it in its add-on container ``net.addons[<name>]`` (state-dict keys ``addons.<name>.*``);
- ``views(images, settings)``: extra input views, run in the family's forward pass when the
  family offers :data:`SHARED_VIEWS`;
- ``loss_terms(ctx, settings)``: its loss parts (logged) and what it adds to the total; an add-on
  that replaces or re-weights the family's classification loss does so through ``ctx.base``.

An add-on asks the context for capabilities (``ctx.offers(...)``), never for a family name.
``ExperimentConfig.addons`` holds free-form sections (name -> mapping); :func:`resolve_addons`
turns them into each add-on's dataclass, rejecting unknown add-ons and keys by name. Adding an
add-on touches its module, its test and one line of :data:`BUILTIN` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor, nn

from tagseg.errors import ConfigError

# The built-in add-ons (each module defines ``ADDON``), in the order their loss terms are added.
BUILTIN = (
    "tagseg.addons.hfpl",
    "tagseg.addons.ppc",
    "tagseg.addons.rca",
)

# The formulations an add-on (or one of its parts) can follow: its official code, or the paper.
FORMULATIONS = ("official", "paper")

# What a family can offer its add-ons (``Family.capabilities``):
SCORE_MAPS = "score_maps"  # ctx.maps / ctx.label_maps: per-location class scores of view 1
FEATURES = "features"  # ctx.features: per-location features (B, D, h, w) that add-on modules act on
CAM_LOGITS = "cam_logits"  # ctx.maps are raw foreground CAM logits (B, K-1, h, w), no background channel
SHARED_VIEWS = "shared_views"  # the family runs the add-ons' extra views in its own forward pass
VIEW_HEADS = "view_heads"  # the network runs each add-on module on every view's features in its forward
AUX_CAM_HEAD = "aux_cam_head"  # the network takes an add-on's second CAM head, whose maps masks may use
WHOLE_CLASS_LOSS = "whole_class_loss"  # ctx.base is the family's whole classification loss
CAPABILITIES = (SCORE_MAPS, FEATURES, CAM_LOGITS, SHARED_VIEWS, VIEW_HEADS, AUX_CAM_HEAD, WHOLE_CLASS_LOSS)

# State-dict keys of model files written before add-on modules lived in ``net.addons`` (one
# attribute per family and add-on): old first key component -> its place in the container.
LEGACY_KEYS = {
    "projector": "addons.ppc",  # PPC on the CAM family
    "ppc_projector": "addons.ppc",  # PPC on the patch family
    "aggregation": "addons.rca.aggregation",  # RCA's aggregation head (CAM family)
    "memory": "addons.rca.memory",  # RCA's region bank (CAM family)
    "rca_memory": "addons.rca.memory",  # RCA's region bank (patch family)
}


def upgrade_state_dict(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``state`` with every legacy add-on key (:data:`LEGACY_KEYS`, after ``prefix``) renamed to
    its place in the add-on container; other keys unchanged, order kept."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        rest = key[len(prefix):] if key.startswith(prefix) else None
        head, dot, tail = (rest or "").partition(".")
        if rest is not None and dot and head in LEGACY_KEYS:
            key = f"{prefix}{LEGACY_KEYS[head]}.{tail}"
        out[key] = value
    return out


def _upgrade_on_load(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    renamed = upgrade_state_dict(state_dict, prefix)
    if list(renamed) != list(state_dict):
        state_dict.clear()
        state_dict.update(renamed)


@dataclass
class BuildContext:
    """What an add-on needs to size its modules: K (with background), the feature channels its
    modules act on, the 0-based last training epoch, the run's seed and the family's capabilities."""

    num_classes: int
    feature_dim: int
    last_epoch: Optional[int]
    seed: int
    capabilities: frozenset = frozenset()

    def offers(self, capability: str) -> bool:
        return capability in self.capabilities


def _no_features(output: Any) -> Tensor:
    raise ConfigError("this family gives its add-ons no per-view features")


@dataclass
class LossContext:
    """One batch as a family sees it after its forward pass.

    maps: score maps (B, C, h, w) of view 1: raw foreground CAMs (C = K-1, :data:`CAM_LOGITS`) or
    K class probabilities with background; label_maps: the maps the family draws pixel labels from
    (defaults to ``maps``; SEAM: its PCM-revised foreground maps); features (B, D, h, w); scores:
    pooled image scores (B, K) or None; output / view_outputs: the network's output for the batch
    and for the add-on's extra views; view_label_maps / view_features: the label maps and
    features of one such output; class_loss: the family's classification loss of image scores
    (B, K); base: the family's classification loss of this batch (parts 'mce' or 'cls'), as
    replaced so far by the add-ons before (HFPL's ISL turns it into (1-λ)·L + λ·ISL): an add-on
    that replaces or re-weights it assigns ``ctx.base``, and the family puts ``ctx.base`` into
    its total in place of its own classification loss.
    """

    model: nn.Module
    core: nn.Module
    batch: dict
    epoch: int
    maps: Tensor
    features: Tensor
    base: Tensor
    output: Any = None
    view_outputs: tuple = ()
    scores: Optional[Tensor] = None
    class_loss: Optional[Callable[[Tensor], Tensor]] = None
    capabilities: frozenset = frozenset()
    label_maps: Optional[Tensor] = None
    view_label_maps: Callable[[Any], Tensor] = _no_features
    view_features: Callable[[Any], Tensor] = _no_features

    def __post_init__(self) -> None:
        if self.label_maps is None:
            self.label_maps = self.maps

    def offers(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def has_background(self) -> bool:
        """Whether the score maps include the background channel (not raw foreground CAMs)."""
        return not self.offers(CAM_LOGITS)

    @property
    def images(self) -> Tensor:
        return self.batch["image"]

    @property
    def labels(self) -> Tensor:
        return self.batch["labels"].float()


def _no_views(images: Tensor, settings: Any) -> list:
    return []


def _no_modules(settings: Any, ctx: BuildContext) -> Optional[nn.Module]:
    return None


def _no_terms(ctx: LossContext, settings: Any) -> tuple[dict[str, Tensor], Optional[Tensor]]:
    return {}, None


@dataclass(frozen=True)
class Addon:
    """An add-on. requires: switch key of its section -> the family capabilities it needs (e.g.
    HFPL: ``{"isl": {SCORE_MAPS}, "fsl": {SCORE_MAPS, CAM_LOGITS}}``); hints: extra words when a
    switch is refused."""

    name: str
    settings: type
    requires: Mapping[str, frozenset]
    attach: Callable[[Any, BuildContext], Optional[nn.Module]] = _no_modules
    views: Callable[[Tensor, Any], list] = _no_views
    loss_terms: Callable[[LossContext, Any], tuple[dict[str, Tensor], Optional[Tensor]]] = _no_terms
    hints: Mapping[str, str] = field(default_factory=dict)
    cam_head: bool = False  # on a family with AUX_CAM_HEAD its module gives a second set of CAMs
    patch_sized: tuple[str, ...] = ()  # settings in px that must be multiples of the family's patch size

    def __post_init__(self) -> None:
        for switch, needs in self.requires.items():
            unknown = sorted(set(needs) - set(CAPABILITIES))
            if unknown:
                raise ConfigError(f"add-on {self.name!r}, switch {switch!r}: unknown capability {unknown[0]!r} "
                                  f"(known: {', '.join(CAPABILITIES)})")

    def key(self, switch: str) -> str:
        return f"addons.{self.name}.{switch}"

    def label(self, switch: str) -> str:
        return self.name if switch == "enabled" else switch

    def on(self, settings: Any) -> list[str]:
        """The switches turned on in ``settings``."""
        return [s for s in self.requires if getattr(settings, s)]

    def missing(self, switch: str, capabilities: frozenset) -> list[str]:
        """The capabilities ``switch`` needs that ``capabilities`` lacks, sorted."""
        return sorted(set(self.requires[switch]) - set(capabilities))


ADDONS: dict[str, Addon] = {}


def register_addon(addon: Addon) -> Addon:
    ADDONS[addon.name] = addon
    return addon


def registered_addons() -> dict[str, Addon]:
    """Every registered add-on by name: the built-ins in :data:`BUILTIN` order (imported on first
    use; the order in which their loss terms are added), then any other registered one."""
    ordered = {}
    for module in BUILTIN:
        addon = importlib.import_module(module).ADDON
        ordered[addon.name] = addon
    for name, addon in ADDONS.items():
        ordered.setdefault(name, addon)
    return ordered


class AddonSections(dict):
    """``ExperimentConfig.addons`` once resolved: name -> the add-on's settings, also as attributes
    (``cfg.addons.ppc.enabled``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _section(addon: Addon, raw: Any) -> Any:
    cls = addon.settings
    if isinstance(raw, cls):
        return raw
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"addons.{addon.name}: expected a mapping of settings, got {raw!r}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"addons.{addon.name}.{unknown[0]}: unknown key; addons.{addon.name} takes "
                          f"{', '.join(known)}")
    try:
        schema = OmegaConf.structured(cls)
        OmegaConf.set_readonly(schema, False)
        return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.create(dict(raw))))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"addons.{addon.name}: {exc}") from exc


def resolve_addons(cfg: Any) -> AddonSections:
    """Turn ``cfg.addons`` into every registered add-on's settings (defaults for absent sections),
    store them back in ``cfg.addons`` and return them. Idempotent."""
    raw = cfg.addons
    if isinstance(raw, AddonSections):
        return raw
    addons = registered_addons()
    unknown = sorted(set(raw or {}) - set(addons))
    if unknown:
        raise ConfigError(f"addons.{unknown[0]}: unknown add-on; known add-ons: {', '.join(addons)}")
    resolved = AddonSections((name, _section(a, (raw or {}).get(name))) for name, a in addons.items())
    cfg.addons = resolved
    return resolved


def enabled_addons(cfg: Any) -> list[tuple[Addon, Any]]:
    """The add-ons with at least one switch on, in registration order, with their settings."""
    sections = resolve_addons(cfg)
    return [(a, sections[name]) for name, a in registered_addons().items() if a.on(sections[name])]


def cam_head_keys(cfg: Any, enabled_only: bool = True) -> list[str]:
    """The switch keys of the add-ons that give a network a second CAM head (``addons.<name>.<switch>``),
    only the switched-on ones unless ``enabled_only`` is false."""
    sections = resolve_addons(cfg)
    return [a.key(switch) for name, a in registered_addons().items() if a.cam_head
            for switch in a.requires if not enabled_only or getattr(sections[name], switch)]


def served_families(addon: Addon, switch: str, families: Mapping[str, frozenset]) -> list[str]:
    """The families (name -> capabilities) that offer everything ``switch`` needs, sorted."""
    return sorted(name for name, caps in families.items() if not addon.missing(switch, caps))


def check_capabilities(cfg: Any, family: str, capabilities: frozenset,
                       families: Optional[Mapping[str, frozenset]] = None) -> None:
    """Reject a switched-on add-on whose switch needs a capability the family ``family`` does not
    offer: one ConfigError naming the key, the add-on, the family and the missing capability
    (``families``: every registered family's capabilities, to say which would serve)."""
    for addon, settings in enabled_addons(cfg):
        for switch in addon.on(settings):
            missing = addon.missing(switch, capabilities)
            if missing:
                served = served_families(addon, switch, families or {})
                hint = addon.hints.get(switch, "")
                raise ConfigError(
                    f"{addon.key(switch)}=true: the {addon.label(switch).upper()} add-on is not available for "
                    f"model.family={family!r} (it serves: {', '.join(served) or 'no registered family'}"
                    f"{'; ' + hint if hint else ''}; it needs the family capability "
                    f"{', '.join(repr(m) for m in missing)}, which {family!r} does not offer)")


def attach_addons(cfg: Any, net: nn.Module, ctx: BuildContext) -> nn.Module:
    """Put every enabled add-on's module into the network's add-on container ``net.addons`` (an
    ``nn.ModuleDict`` keyed by add-on name) and let the network read model files written with the
    older per-attribute key names (:data:`LEGACY_KEYS`)."""
    container = getattr(net, "addons", None)
    if not isinstance(container, nn.ModuleDict):
        raise ConfigError(f"{type(net).__name__} has no add-on container (an nn.ModuleDict 'addons')")
    for addon, settings in enabled_addons(cfg):
        module = addon.attach(settings, ctx)
        if module is not None:
            container[addon.name] = module
    net.register_load_state_dict_pre_hook(_upgrade_on_load)
    return net


def extra_views(cfg: Any, images: Tensor) -> tuple[list[Tensor], dict[str, slice]]:
    """All enabled add-ons' extra views for one forward pass, and each add-on's slice of them."""
    views: list[Tensor] = []
    where: dict[str, slice] = {}
    for addon, settings in enabled_addons(cfg):
        mine = addon.views(images, settings)
        where[addon.name] = slice(len(views), len(views) + len(mine))
        views.extend(mine)
    return views, where


def addon_loss_terms(cfg: Any, ctx: LossContext, parts: dict[str, Tensor],
                     view_outputs: Optional[list] = None, where: Optional[dict[str, slice]] = None
                     ) -> Optional[Tensor]:
    """Sum of the terms the enabled add-ons add to the total (None when none adds one); their
    parts go into ``parts``; a replaced classification loss is left in ``ctx.base``."""
    extra = None
    for addon, settings in enabled_addons(cfg):
        if view_outputs is not None and where is not None:
            ctx.view_outputs = tuple(view_outputs[where[addon.name]])
        new_parts, term = addon.loss_terms(ctx, settings)
        parts.update(new_parts)
        if term is not None:
            extra = term if extra is None else extra + term
    return extra
