"""Nested settings (dicts of dicts, as configs and manifests are stored) compared key by key."""

from __future__ import annotations

from typing import Any, Collection, Mapping


def flatten(obj: Any, skip: Collection[str] = (), prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``; keys named in ``skip`` are left out at any depth.

    A non-mapping ``obj`` is ``{prefix: obj}``; an empty mapping contributes no key.
    """
    if not isinstance(obj, Mapping):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if k not in skip:
            out.update(flatten(v, skip, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_values(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (old value, new value)}`` for the keys both flat mappings have and whose values
    differ, in key order. A key only one side has is not compared (a setting added or removed
    since ``old`` was written)."""
    return {k: (old[k], new[k]) for k in sorted(set(old) & set(new)) if old[k] != new[k]}


def describe_changes(changed: Mapping[str, tuple[Any, Any]], limit: int | None = None) -> list[str]:
    """``"key: old -> new"`` (values as ``repr``) for the first ``limit`` entries of
    :func:`changed_values` (all when None)."""
    return [f"{k}: {old!r} -> {new!r}" for k, (old, new) in list(changed.items())[:limit]]
