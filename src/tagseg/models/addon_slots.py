"""The add-on container of a network: one ``nn.ModuleDict`` named ``addons``, keyed by add-on name.

The network knows no add-on; it asks each module in its container, by duck typing:

- ``view_output(features (B, D, h, w)) -> Tensor | None``: run on every view's features inside the
  forward pass (networks that run view heads); the result lands in the output's ``addon_maps``;
- ``cam_head`` (bool): that result is a second set of CAMs (B, K−1, h, w) pseudo-masks may use;
- ``on_epoch_end(epoch)``: called at the end of every training epoch.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn


def addon_container() -> nn.ModuleDict:
    """An empty container (a network's ``addons``)."""
    return nn.ModuleDict()


def view_outputs(container: nn.ModuleDict, features: Tensor) -> dict[str, Tensor]:
    """Every container module's per-view output for ``features``, in container order."""
    out: dict[str, Tensor] = {}
    for name, module in container.items():
        run = getattr(module, "view_output", None)
        result = run(features) if run is not None else None
        if result is not None:
            out[name] = result
    return out


def cam_head_name(container: nn.ModuleDict) -> Optional[str]:
    """The name of the module whose per-view output is a second set of CAMs, or None."""
    return next((name for name, m in container.items() if getattr(m, "cam_head", False)), None)


def end_epoch(container: nn.ModuleDict, epoch: int) -> None:
    """Run every container module's ``on_epoch_end(epoch)``."""
    for module in container.values():
        hook = getattr(module, "on_epoch_end", None)
        if hook is not None:
            hook(epoch)
