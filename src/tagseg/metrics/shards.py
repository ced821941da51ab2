"""Scores of shards: what each shard's ``eval.json`` keeps, and their exact merge.

A shard ``i/n`` scores the images ``records[i::n]`` (the split ``pseudo --shard`` uses). Its
eval.json holds the integer sums every metric is computed from — the (K, K+1) confusion matrix
and, per class, the contour counts (matched / total boundary pixels of prediction and ground
truth, images) — plus the shard, its image ids and their per-image mIoU. Adding the sums of
all n shards gives the whole set's sums exactly (integers), so the merged metrics equal an
unsharded evaluation to the last digit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from tagseg.errors import DataError
from tagseg.metrics.contour import ContourFAccumulator
from tagseg.metrics.miou import ConfusionMatrix
from tagseg.metrics.scorer import Scorer

STATE_FORMAT = "tagseg-eval-state/1"
SHARED_KEYS = ("inference", "split")  # settings a merged result keeps when every shard has the same
CONTOUR_COUNTS = ("matched_pred", "total_pred", "matched_gt", "total_gt", "occurrences")


def shard_file_name(shard: tuple[int, int]) -> str:
    """``eval.json`` for the whole set, ``eval.shard-<i>-of-<n>.json`` for shard i of n > 1."""
    i, n = shard
    return "eval.json" if n <= 1 else f"eval.shard-{i}-of-{n}.json"


def eval_state(confusion: ConfusionMatrix, contour: Optional[ContourFAccumulator], per_image: Sequence[dict],
               ids: Sequence[str], shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The mergeable sums of one evaluation (JSON-ready): confusion matrix, contour counts (None
    without contour F), per-image mIoU in scoring order, the image ids and the shard (i, n)."""
    state: dict[str, Any] = {
        "format": STATE_FORMAT, "shard": [int(shard[0]), int(shard[1])], "ids": list(ids),
        "confusion": confusion.matrix.tolist(), "per_image": list(per_image), "contour": None,
    }
    if contour is not None:
        state["contour"] = {"ratio": contour.ratio, "radius": contour.radius, "num_images": contour.num_images,
                            **{k: getattr(contour, k).tolist() for k in CONTOUR_COUNTS}}
    return state


def _counts(value: Any, shape: tuple[int, ...], what: str, source: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{source}: {what} is not a table of numbers") from None
    if arr.shape != shape:
        raise DataError(f"{source}: {what} has shape {arr.shape}, expected {shape}")
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr != np.round(arr)).any() or (arr > 2**62).any():
        raise DataError(f"{source}: {what} must hold non-negative integer counts")
    return arr.astype(np.int64)


def read_state(path: str | Path) -> dict[str, Any]:
    """The checked evaluation state of one eval.json (DataError naming the file when it has none
    or it is malformed: wrong shapes, negative or fractional counts, bad shard)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot read an evaluation result ({exc})") from None
    state = doc.get("state") if isinstance(doc, dict) else None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise DataError(f"{path}: holds no mergeable evaluation state (written by an older tagseg? "
                        f"score the shard again with `tagseg eval --shard i/n`)")
    names = doc.get("class_names")
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and len(names) >= 2):
        raise DataError(f"{path}: class_names missing or malformed")
    k = len(names)
    shard = state.get("shard")
    if not (isinstance(shard, list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
            and shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise DataError(f"{path}: shard {shard!r} is not [i, n] with 0 <= i < n")
    ids = state.get("ids")
    if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise DataError(f"{path}: ids must be a list of image ids")
    per_image = state.get("per_image")
    if not (isinstance(per_image, list) and all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                                and (r.get("miou") is None or isinstance(r.get("miou"), (int, float)))
                                                for r in per_image)):
        raise DataError(f"{path}: per_image must be a list of {{id, miou}} records")
    dataset = doc.get("dataset")
    out = {"source": str(path), "extras": {k: doc[k] for k in SHARED_KEYS if k in doc}, "class_names": names,
           "dataset": dataset if isinstance(dataset, str) else None, "shard": (shard[0], shard[1]), "ids": ids,
           "per_image": per_image, "contour": None,
           "confusion": _counts(state.get("confusion"), (k, k + 1), "the confusion matrix", str(path))}
    contour = state.get("contour")
    if contour is not None:
        if not isinstance(contour, dict):
            raise DataError(f"{path}: contour state malformed")
        counts = {key: _counts(contour.get(key), (k,), f"contour {key}", str(path)) for key in CONTOUR_COUNTS}
        num = _counts([contour.get("num_images")], (1,), "contour num_images", str(path))[0]
        ratio, radius = contour.get("ratio"), contour.get("radius")
        if not isinstance(ratio, (int, float)) or not (radius is None or isinstance(radius, int)):
            raise DataError(f"{path}: contour tolerance (ratio, radius) malformed")
        out["contour"] = {"ratio": float(ratio), "radius": radius, "num_images": int(num), **counts}
    return out


def merge_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add the states of all shards of one evaluation (from :func:`read_state`).

    Every shard i of the same n must be there exactly once, with the same classes and contour
    settings, and no image may be scored twice (DataError naming the files otherwise). Returns
    a state of the whole set (shard (0, 1)): summed counts, ids and per-image records in the
    order an unsharded evaluation visits them (shard i's j-th image is the set's (j·n + i)-th).
    """
    if not states:
        raise DataError("nothing to merge: give the eval.json of every shard")
    first = states[0]
    n = first["shard"][1]
    for s in states[1:]:
        if s["class_names"] != first["class_names"] or s["dataset"] != first["dataset"]:
            raise DataError(f"{s['source']} scores another data set or class list than {first['source']}")
        if s["shard"][1] != n:
            raise DataError(f"{s['source']} is shard {s['shard'][0]}/{s['shard'][1]}, "
                            f"{first['source']} one of {n}: merge the shards of one split")
        if (s["contour"] is None) != (first["contour"] is None) or (
                s["contour"] is not None and (s["contour"]["ratio"], s["contour"]["radius"])
                != (first["contour"]["ratio"], first["contour"]["radius"])):
            raise DataError(f"{s['source']} and {first['source']} differ in their contour settings")
    by_index: dict[int, dict] = {}
    for s in states:
        i = s["shard"][0]
        if i in by_index:
            raise DataError(f"shard {i}/{n} given twice: {by_index[i]['source']} and {s['source']}")
        by_index[i] = s
    missing = sorted(set(range(n)) - set(by_index))
    if missing:
        raise DataError(f"missing shard(s) {', '.join(f'{i}/{n}' for i in missing[:8])} of {n}: "
                        "the merged result would not cover the whole set")
    seen: dict[str, str] = {}
    for s in states:
        for image_id in s["ids"]:
            if image_id in seen:
                raise DataError(f"image {image_id} is scored by both {seen[image_id]} and {s['source']}")
            seen[image_id] = s["source"]
    ordered = [by_index[i] for i in range(n)]
    ids = _interleave([s["ids"] for s in ordered])
    per_image = _interleave([s["per_image"] for s in ordered])
    extras = {k: v for k, v in first["extras"].items() if all(s["extras"].get(k) == v for s in states)}
    merged = {"source": "merged", "extras": extras, "class_names": first["class_names"], "dataset": first["dataset"],
              "shard": (0, 1), "ids": ids,
              "per_image": per_image, "confusion": sum(s["confusion"] for s in ordered), "contour": None}
    if first["contour"] is not None:
        merged["contour"] = {"ratio": first["contour"]["ratio"], "radius": first["contour"]["radius"],
                             "num_images": sum(s["contour"]["num_images"] for s in ordered),
                             **{k: sum(s["contour"][k] for s in ordered) for k in CONTOUR_COUNTS}}
    return merged


def _interleave(lists: Sequence[Sequence[Any]]) -> list[Any]:
    """[a0, b0, c0, a1, b1, ...]: shard i's j-th item at position j·n + i."""
    out: list[Any] = []
    longest = max((len(x) for x in lists), default=0)
    for j in range(longest):
        out.extend(x[j] for x in lists if j < len(x))
    return out


def accumulators(state: dict[str, Any]) -> tuple[ConfusionMatrix, Optional[ContourFAccumulator]]:
    """The confusion matrix and contour accumulator holding a (merged) state's sums."""
    names = state["class_names"]
    confusion = ConfusionMatrix(len(names))
    confusion.matrix = np.array(state["confusion"], dtype=np.int64)
    contour = None
    if state["contour"] is not None:
        c = state["contour"]
        contour = ContourFAccumulator(len(names), ratio=c["ratio"], radius=c["radius"], class_names=names)
        for k in CONTOUR_COUNTS:
            setattr(contour, k, np.array(c[k], dtype=np.int64))
        contour.num_images = c["num_images"]
    return confusion, contour


def scorer_state(scorer: Scorer, ids: Sequence[str], shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """:func:`eval_state` of a :class:`~tagseg.metrics.scorer.Scorer` (its per-image mIoU in
    scoring order)."""
    return eval_state(scorer.confusion, scorer.contour, scorer.per_image, ids, shard)


def scorer_from_state(state: dict[str, Any]) -> Scorer:
    """A Scorer holding a (merged) state's sums and per-image mIoU, ready for ``summary()``."""
    confusion, contour = accumulators(state)
    scorer = Scorer(len(state["class_names"]), state["class_names"], contour=contour is not None)
    scorer.confusion, scorer.contour = confusion, contour
    scorer.per_image = list(state["per_image"])
    return scorer
