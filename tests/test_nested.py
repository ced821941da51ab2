"""utils.nested: flattening nested settings and comparing them key by key (resume checks, manifests)."""

from __future__ import annotations

from tagseg.utils.nested import changed_values, describe_changes, flatten


def test_flatten_dots_nested_keys_and_skips_at_any_depth():
    doc = {"a": {"b": 1, "device": "cpu", "c": {"d": [1, 2], "device": "cuda"}}, "device": 3, "e": {}}
    assert flatten(doc) == {"a.b": 1, "a.device": "cpu", "a.c.d": [1, 2], "a.c.device": "cuda", "device": 3}
    assert flatten(doc, skip={"device"}) == {"a.b": 1, "a.c.d": [1, 2]}
    assert flatten(5, prefix="x") == {"x": 5}


def test_changed_values_compares_only_shared_keys_in_order():
    old = {"z": 1, "a": 2, "gone": 0, "same": [1]}
    new = {"z": 3, "a": 2.5, "added": 9, "same": [1]}
    assert changed_values(old, new) == {"a": (2, 2.5), "z": (1, 3)}
    assert list(changed_values(old, new)) == ["a", "z"]
    assert changed_values(old, dict(old)) == {}


def test_describe_changes_shows_reprs_and_cuts_at_the_limit():
    changed = {"a": (2, 2.5), "b": ("x", "y"), "c": (None, 1)}
    assert describe_changes(changed) == ["a: 2 -> 2.5", "b: 'x' -> 'y'", "c: None -> 1"]
    assert describe_changes(changed, limit=1) == ["a: 2 -> 2.5"]
