"""What kind of run a folder holds (from its ``config.yaml``), so that a verb given the wrong kind
of run says so in one line instead of comparing unrelated settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from tagseg.errors import TagsegError

TAGS = "tag-classifier"  # tagseg train: patch-classifier or CAM family (config has method:, pseudo:)
SEGMENT = "segmentation"  # tagseg segment train: DeepLab on pseudo-masks (config has segment:, inference:)
_VERB = {TAGS: "tagseg train", SEGMENT: "tagseg segment train"}
_FOLLOW = {TAGS: "tagseg pseudo --run", SEGMENT: "tagseg segment eval --run / tagseg predict --model"}


def run_kind(folder: Path) -> Optional[str]:
    """:data:`TAGS` or :data:`SEGMENT` for a run folder, None when it holds no readable config."""
    import yaml

    try:
        data = yaml.safe_load((Path(folder) / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(data, dict):
        return None
    if "segment" in data or "inference" in data:
        return SEGMENT
    if "method" in data or "pseudo" in data:
        return TAGS
    return None


def require_run_kind(folder: Path, expected: str, action: str) -> None:
    """TagsegError (one line) when ``folder`` holds a run of another kind than ``expected``;
    ``action`` is what was asked (e.g. "resume")."""
    found = run_kind(folder)
    if found is not None and found != expected:
        raise TagsegError(f"{folder} is a {found} run (made by `{_VERB[found]}`), not a {expected} run: "
                          f"cannot {action} it here; use `{_FOLLOW[found]} {folder}`, or another --out")
