"""``manifest.json``: how a stage output folder was made (version, run, split, settings, counts)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from tagseg.utils.io import write_json
from tagseg.utils.nested import changed_values, describe_changes, flatten

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tagseg-manifest/1"
# keys that say how a run was carried out or which records it covers, not what a record's files hold:
# a resume may change them (e.g. another device, more workers, all images after the first 100)
RESUMABLE_KEYS = frozenset({"device", "num_workers", "workers", "threads", "cpu_threads", "progress", "root",
                            "name", "log_every", "keep_checkpoints", "max_images", "train_split", "val_split",
                            "pseudo_split"})
# the parts of a manifest that must match for a resumed run to add to the outputs already there
RESUME_FIELDS = ("stage", "split", "settings", "extra", "models")


def _plain(obj: Any) -> Any:
    """Dataclasses, paths and tuples (at any depth) as JSON-ready dicts, strings and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def config_hash(config: Any) -> str:
    """sha256 (hex) of a configuration (a dataclass or JSON-able mapping), keys sorted: equal
    settings give equal hashes on every machine."""
    text = json.dumps(_plain(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class ManifestInfo:
    """What the caller knows about a stage's output folder; the runner adds the counts.

    stage: the stage's name ('pseudo', 'predict', ...); settings: the stage's own settings
    (a dataclass or mapping); config: the whole configuration the hash is taken of; run: the
    run folder it came from (None without one); split: the data split; input: the folder read.
    """

    stage: str
    settings: Any = None
    config: Any = None
    run: Optional[str | Path] = None
    split: Optional[str] = None
    input: Optional[str | Path] = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, str] = field(default_factory=dict)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 (hex) of a file's bytes, read in ``chunk``-byte pieces (the same as ``sha256sum``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tagseg_version() -> str:
    from tagseg import __version__

    return __version__


def manifest_document(info: ManifestInfo, counts: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON document of :data:`MANIFEST_NAME`."""
    return {
        "format": MANIFEST_FORMAT,
        "tagseg_version": tagseg_version(),
        "stage": info.stage,
        "run": None if info.run is None else str(info.run),
        "split": info.split,
        "input": None if info.input is None else str(info.input),
        "settings": json.loads(json.dumps(_plain(info.settings), default=str)),
        "config_hash": None if info.config is None else config_hash(info.config),
        **({"extra": json.loads(json.dumps(dict(info.extra), default=str))} if info.extra else {}),
        **({"models": {str(k): str(v) for k, v in info.models.items()}} if info.models else {}),
        "counts": dict(counts),
    }


def write_manifest(root: str | Path, info: ManifestInfo, counts: Mapping[str, Any]) -> Path:
    """Write ``<root>/manifest.json`` atomically; returns its path."""
    path = Path(root) / MANIFEST_NAME
    write_json(path, manifest_document(info, counts), root=root)
    return path


def read_manifest(root: str | Path) -> Optional[dict[str, Any]]:
    """The manifest of an output folder, or None when it has none (or an unreadable one)."""
    try:
        doc = json.loads((Path(root) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT else None


def settings_differences(previous: Mapping[str, Any], info: ManifestInfo) -> list[str]:
    """What differs between the manifest ``previous`` (as read from disk) and a run about to
    write ``info`` into the same folder, as ``"key: old -> new"`` lines (empty: same settings);
    a stage setting's key is its path within the settings (``walk.beta``).

    Compares the stage, split, stage settings, extra facts and model digests (:data:`RESUME_FIELDS`), ignoring
    the keys of :data:`RESUMABLE_KEYS` (device, workers, data root, image count, ...), which do
    not change what a record's files hold, and keys only one side has (a setting added to tagseg
    after the folder was made, or since removed; a field a caller left unstated, None), so a
    finished folder stays readable across versions and callers.
    """
    new = json.loads(json.dumps(manifest_document(info, {}), default=str))
    old = flatten({f: previous[f] for f in RESUME_FIELDS if previous.get(f) is not None}, RESUMABLE_KEYS)
    now = flatten({f: new[f] for f in RESUME_FIELDS if new.get(f) is not None}, RESUMABLE_KEYS)
    return describe_changes({key.removeprefix("settings."): change for key, change in changed_values(old, now).items()})
