"""The add-on registry: each add-on is one module that declares an :class:`Addon` and registers it here.

An add-on declares its config dataclass (every key of its ``addons.<name>`` section, switches
included), which switch serves which model family, and its hooks:

- ``attach(family, net, settings, ctx)``: add its modules to a freshly built network;
- ``views(family, images, settings)``: extra input views run in the family's single forward pass;
- ``loss_terms(family, ctx, settings)``: its loss parts (logged) and what it adds to the total.

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


@dataclass
class BuildContext:
    """What an add-on needs to size its modules: K (with background), the feature channels its
    modules act on, the 0-based last training epoch and the run's seed."""

    num_classes: int
    feature_dim: int
    last_epoch: Optional[int]
    seed: int


@dataclass
class LossContext:
    """One batch as a family sees it after its forward pass.

    maps: score maps (B, C, h, w): the CAM family's K−1 raw CAMs, the patch family's K patch
    probabilities Z; features (B, D, h, w); scores: pooled image scores (B, K) or None;
    output / view_outputs: the network's output for the batch and for the add-on's extra views;
    class_loss: the family's classification loss of image scores (B, K) (patch family: MCE);
    base: the family's classification loss of this batch (parts 'mce' or 'cls'), as replaced so far
    by the add-ons before (HFPL's ISL turns it into (1−λ)·L + λ·ISL); an add-on that replaces it
    updates it, one that scales the base head's loss scales this.
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

    @property
    def images(self) -> Tensor:
        return self.batch["image"]

    @property
    def labels(self) -> Tensor:
        return self.batch["labels"].float()


def _no_views(family: str, images: Tensor, settings: Any) -> list:
    return []


def _no_modules(family: str, net: nn.Module, settings: Any, ctx: BuildContext) -> None:
    return None


def _no_terms(family: str, ctx: LossContext, settings: Any) -> tuple[dict[str, Tensor], Optional[Tensor]]:
    return {}, None


@dataclass(frozen=True)
class Addon:
    """An add-on. switches: switch key of its section -> the families it serves (e.g. HFPL:
    ``{"isl": ("cam", "patch"), "fsl": ("cam",)}``); hints: extra words when a switch is refused."""

    name: str
    settings: type
    switches: Mapping[str, tuple[str, ...]]
    attach: Callable[[str, nn.Module, Any, BuildContext], None] = _no_modules
    views: Callable[[str, Tensor, Any], list] = _no_views
    loss_terms: Callable[[str, LossContext, Any], tuple[dict[str, Tensor], Optional[Tensor]]] = _no_terms
    hints: Mapping[str, str] = field(default_factory=dict)

    def key(self, switch: str) -> str:
        return f"addons.{self.name}.{switch}"

    def label(self, switch: str) -> str:
        return self.name if switch == "enabled" else switch

    def on(self, settings: Any) -> list[str]:
        """The switches turned on in ``settings``."""
        return [s for s in self.switches if getattr(settings, s)]


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


def check_family(cfg: Any, family: str) -> None:
    """Reject a switched-on add-on that does not serve ``family``, naming the key."""
    for addon, settings in enabled_addons(cfg):
        for switch in addon.on(settings):
            served = addon.switches[switch]
            if family not in served:
                hint = addon.hints.get(switch, "")
                raise ConfigError(f"{addon.key(switch)}=true: the {addon.label(switch).upper()} add-on is not "
                                  f"available for model.family={family!r} (it serves: {', '.join(served)}"
                                  f"{'; ' + hint if hint else ''})")


def attach_addons(cfg: Any, family: str, net: nn.Module, ctx: BuildContext) -> nn.Module:
    """Let every enabled add-on add its modules to ``net``."""
    for addon, settings in enabled_addons(cfg):
        addon.attach(family, net, settings, ctx)
    return net


def extra_views(cfg: Any, family: str, images: Tensor) -> tuple[list[Tensor], dict[str, slice]]:
    """All enabled add-ons' extra views for one forward pass, and each add-on's slice of them."""
    views: list[Tensor] = []
    where: dict[str, slice] = {}
    for addon, settings in enabled_addons(cfg):
        mine = addon.views(family, images, settings)
        where[addon.name] = slice(len(views), len(views) + len(mine))
        views.extend(mine)
    return views, where


def addon_loss_terms(cfg: Any, family: str, ctx: LossContext, parts: dict[str, Tensor],
                     view_outputs: Optional[list] = None, where: Optional[dict[str, slice]] = None
                     ) -> Optional[Tensor]:
    """Sum of what the enabled add-ons add to the total (None when none is on); their parts go
    into ``parts``."""
    extra = None
    for addon, settings in enabled_addons(cfg):
        if view_outputs is not None and where is not None:
            ctx.view_outputs = tuple(view_outputs[where[addon.name]])
        new_parts, term = addon.loss_terms(family, ctx, settings)
        parts.update(new_parts)
        if term is not None:
            extra = term if extra is None else extra + term
    return extra
