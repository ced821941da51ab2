"""Find what a run folder holds: config, training history, mask folders, eval.json files.

Everything is optional: a missing or unreadable piece becomes a note for the page instead of
an error, so a report can be written for a run at any stage. Layout read here::

    RUN/config.yaml                      the resolved config (any schema with a ``data`` section)
    RUN/history.jsonl                    one JSON object per epoch
    RUN/pseudo/<split>/masks/            pseudo-masks
    RUN/pseudo/<split>/<name>/masks/     refined pseudo-masks (e.g. crf/)
    RUN/refine/<method>/<split>/masks/   masks of the refine stage (irn, psa, par)
    RUN/predictions/<split>/masks/       a segmentation network's outputs (and <name>/masks/); a
                                         <split>/ folder holding the <id>.png files directly counts too
    <mask folder>/../eval.json           metrics of that mask folder (any other eval.json is kept too;
                                         RUN/eval.json with "split" belongs to predictions/<split>)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tagseg.errors import TagsegError
from tagseg.utils.safe_paths import check_id

STAGE_FOLDERS = ("pseudo", "predictions")
STAGE_LABELS = {"pseudo": "pseudo-mask", "predictions": "segmentation output"}
SKIP_FOLDERS = {"checkpoints", "tb", "data"}
REFINE_FOLDER = "refine"  # RUN/refine/<method>/<split>/masks: shown beside the seed and CRF masks


@dataclass
class EvalResult:
    """One eval.json: its path relative to the run, its split (from the path) and contents."""

    rel_path: str
    split: Optional[str]
    summary: dict

    @property
    def per_image(self) -> dict[str, Optional[float]]:
        """image id -> per-image mIoU (fraction, None when undefined)."""
        return {str(r["id"]): r.get("miou") for r in self.summary.get("per_image") or [] if "id" in r}


@dataclass
class MaskSource:
    """A folder of ``<id>.png`` class-index masks for one split, with its eval.json if any."""

    key: str  # path of the folder holding masks/, relative to the run, e.g. "pseudo/train/crf"
    label: str  # what to call it on the page, e.g. "pseudo-mask", "refined (crf)"
    mask_dir: Path
    evaluation: Optional[EvalResult] = None


@dataclass
class RunContents:
    """Everything the report shows, gathered from one run folder (see the module docstring)."""

    run_dir: Path
    config: Optional[dict] = None
    config_text: Optional[str] = None
    history: list[dict] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    split: Optional[str] = None
    sources: list[MaskSource] = field(default_factory=list)
    evaluations: list[EvalResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        if self.config and isinstance(self.config.get("name"), str):
            return self.config["name"]
        return self.run_dir.resolve().name


def read_run_config(path: Path) -> tuple[dict, str]:
    """config.yaml as a plain dict (schema-agnostic) and its text; TagsegError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TagsegError(f"{path} is not UTF-8 text: {exc}") from exc
    try:
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:  # YAML errors: e.g. a !!python tag
        raise TagsegError(f"cannot parse {path}: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(data, dict):
        raise TagsegError(f"{path} does not hold a mapping")
    return data, text


def read_history(path: Path) -> tuple[list[dict], list[str]]:
    """history.jsonl records (objects only) in file order, and notes about lines skipped."""
    records, notes = [], []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            notes.append(f"{path.name} line {no} is not JSON ({exc.msg}); skipped")
            continue
        if not isinstance(obj, dict):
            notes.append(f"{path.name} line {no} is not a JSON object; skipped")
            continue
        records.append(obj)
    return records, notes


def numeric_history_keys(history: list[dict]) -> list[str]:
    """Keys with a finite number in at least one record, in first-seen order ('epoch' excluded)."""
    keys: list[str] = []
    for rec in history:
        for k, v in rec.items():
            if k != "epoch" and k not in keys and _is_number(v):
                keys.append(k)
    return keys


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _has_png(folder: Path) -> bool:
    return any(p.suffix == ".png" and not p.name.startswith(".") for p in folder.iterdir())


def find_mask_sources(run_dir: Path, split: str) -> list[MaskSource]:
    """Mask folders of ``split``: pseudo-masks, their refined siblings, then segmentation outputs."""
    sources = []
    for stage in STAGE_FOLDERS:
        split_dir = run_dir / stage / split
        if not split_dir.is_dir():
            continue
        if (split_dir / "masks").is_dir():
            sources.append(MaskSource(f"{stage}/{split}", STAGE_LABELS[stage], split_dir / "masks"))
        elif _has_png(split_dir):
            sources.append(MaskSource(f"{stage}/{split}", STAGE_LABELS[stage], split_dir))
        for child in sorted(p for p in split_dir.iterdir() if p.is_dir() and p.name != "masks"):
            if (child / "masks").is_dir():
                label = f"refined ({child.name})" if stage == "pseudo" else f"{STAGE_LABELS[stage]} ({child.name})"
                sources.append(MaskSource(f"{stage}/{split}/{child.name}", label, child / "masks"))
        if stage == "pseudo":
            sources.extend(_refine_sources(run_dir, split))
    return sources


def _refine_sources(run_dir: Path, split: str) -> list[MaskSource]:
    base = run_dir / REFINE_FOLDER
    if not base.is_dir():
        return []
    return [MaskSource(f"{REFINE_FOLDER}/{m.name}/{split}", f"refined ({m.name})", m / split / "masks")
            for m in sorted(p for p in base.iterdir() if p.is_dir()) if (m / split / "masks").is_dir()]


def find_splits(run_dir: Path) -> list[str]:
    """Split names with at least one mask folder under pseudo/ or predictions/, sorted."""
    found = set()
    for stage in STAGE_FOLDERS:
        base = run_dir / stage
        if base.is_dir():
            found.update(d.name for d in base.iterdir() if d.is_dir() and find_mask_sources(run_dir, d.name))
    refine = run_dir / REFINE_FOLDER
    if refine.is_dir():
        found.update(s.parent.name for s in refine.glob("*/*/masks") if s.is_dir())
    return sorted(found)


def find_eval_files(run_dir: Path) -> list[Path]:
    """Every eval.json under the run (checkpoints/, tb/, data/ and hidden folders skipped), sorted."""
    out = []
    for path in sorted(run_dir.rglob("eval.json")):
        parts = path.relative_to(run_dir).parts[:-1]
        if any(p.startswith(".") for p in parts) or (parts and parts[0] in SKIP_FOLDERS):
            continue
        out.append(path)
    return out


def _split_of(rel_parts: tuple[str, ...], summary: dict) -> Optional[str]:
    """From the path (pseudo/<split>/...), else the summary's 'split', else its dataset name 'voc:<split>'."""
    if len(rel_parts) >= 2 and rel_parts[0] in STAGE_FOLDERS:
        return rel_parts[1]
    if len(rel_parts) >= 3 and rel_parts[0] == REFINE_FOLDER:
        return rel_parts[2]
    if isinstance(summary.get("split"), str):
        return summary["split"]
    dataset = summary.get("dataset")
    if isinstance(dataset, str) and ":" in dataset:
        return dataset.rsplit(":", 1)[1]
    return None


def read_eval(run_dir: Path, path: Path) -> EvalResult:
    """One eval.json; TagsegError when it is not a metrics summary (needs class_names and iou)."""
    rel = path.relative_to(run_dir)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TagsegError(f"{rel} is not valid JSON: {exc}") from exc
    if not isinstance(summary, dict) or not {"class_names", "iou"} <= summary.keys():
        raise TagsegError(f"{rel} is not a tagseg metrics file (no class_names / iou)")
    names, iou = summary["class_names"], summary["iou"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TagsegError(f"{rel}: class_names must be a list of strings")
    if not isinstance(iou, list) or not all(v is None or _is_number(v) for v in iou):
        raise TagsegError(f"{rel}: iou must be a list of numbers (or null)")
    if len(names) != len(iou):
        raise TagsegError(f"{rel}: {len(names)} class names but {len(iou)} IoU values")
    per_image = summary.get("per_image") or []
    if not isinstance(per_image, list):
        raise TagsegError(f"{rel}: per_image must be a list")
    for n, row in enumerate(per_image):
        if isinstance(row, dict) and "id" in row:  # sample names become file names: plain names only
            check_id(str(row["id"]), f"{rel} per_image[{n}]")
    return EvalResult(rel.as_posix(), _split_of(rel.parts[:-1], summary), summary)


def choose_split(splits: list[str], config: Optional[dict]) -> Optional[str]:
    """The split to show samples for: data.pseudo_split, else data.val_split, else the first found."""
    data = (config or {}).get("data") or {}
    for key in ("pseudo_split", "val_split"):
        if data.get(key) in splits:
            return data[key]
    return splits[0] if splits else None


def collect_run(run_dir: str | Path, split: Optional[str] = None) -> RunContents:
    """Gather the run's pieces; TagsegError only when ``run_dir`` is not a folder or ``split`` is unknown."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TagsegError(f"run folder not found: {run_dir}")
    run = RunContents(run_dir)
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            run.config, run.config_text = read_run_config(cfg_path)
        except TagsegError as exc:
            run.notes.append(str(exc))
    else:
        run.notes.append("no config.yaml: images and ground truth cannot be located")
    hist_path = run_dir / "history.jsonl"
    if hist_path.is_file():
        run.history, notes = read_history(hist_path)
        run.notes.extend(notes)
    run.splits = find_splits(run_dir)
    if split is not None and split not in run.splits:
        found = ", ".join(run.splits) or "none"
        raise TagsegError(f"no masks for split {split!r} in {run_dir} (splits with masks: {found})")
    run.split = split or choose_split(run.splits, run.config)
    for path in find_eval_files(run_dir):
        try:
            run.evaluations.append(read_eval(run_dir, path))
        except TagsegError as exc:
            run.notes.append(f"{exc}; skipped")
    if run.split is not None:
        run.sources = find_mask_sources(run_dir, run.split)
        by_folder = {Path(e.rel_path).parent.as_posix(): e for e in run.evaluations}
        for src in run.sources:
            src.evaluation = by_folder.get(src.key)
        # `tagseg segment eval --save-masks` writes RUN/eval.json (with "split") and predictions/<split>/
        root_eval = by_folder.get(".")
        if root_eval is not None and root_eval.split == run.split:
            for src in run.sources:
                if src.key == f"predictions/{run.split}" and src.evaluation is None:
                    src.evaluation = root_eval
    # the selected split's metrics first, in mask-folder order (pseudo, refined, predictions), then the rest
    rank = {id(s.evaluation): n for n, s in enumerate(run.sources) if s.evaluation is not None}
    run.evaluations.sort(key=lambda e: (e.split != run.split, rank.get(id(e), len(rank)), e.rel_path))
    return run


def data_section(config: Optional[dict], data_root: Optional[str] = None,
                 overrides: Sequence[str] = ()) -> dict:
    """The config's ``data`` mapping restricted to DataConfig's fields, then ``data.key=value``
    overrides (TagsegError for other keys), and ``data_root`` replacing root."""
    from tagseg.config import DataConfig

    names = {f.name for f in dataclasses.fields(DataConfig)}
    data = {k: v for k, v in ((config or {}).get("data") or {}).items() if k in names}
    if overrides:
        bad = [o for o in overrides if not o.startswith("data.") or "=" not in o]
        if bad:
            raise TagsegError(f"the report takes only data.key=value overrides (the dataset to show), got {bad[0]!r}")
        try:
            extra = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))["data"]
        except OmegaConfBaseException as exc:
            raise TagsegError(f"invalid override: {exc}") from exc
        unknown = sorted(set(extra) - names)
        if unknown:
            raise TagsegError(f"unknown data key(s) {unknown}; known: {sorted(names)}")
        data.update(extra)
    if data_root is not None:
        data["root"] = data_root
    return data


def resolve_data_root(root: str, run_dir: Path) -> Path:
    """An absolute root as is; a relative one from the working folder, else from the run's parents."""
    path = Path(root)
    if path.is_absolute() or path.exists():
        return path
    for base in (run_dir, *run_dir.resolve().parents):
        if (base / path).exists():
            return base / path
    return path


def load_dataset_index(run: RunContents, data_root: Optional[str] = None, overrides: Sequence[str] = ()):
    """The DatasetIndex of the run's split (images + ground truth), never generating data.

    Raises TagsegError (naming what is missing) when the dataset cannot be read.
    """
    from tagseg.config import DataConfig
    from tagseg.data.build import build_index
    from tagseg.data.folder import read_folder

    if run.split is None:
        raise TagsegError("the run has no mask folders")
    data = data_section(run.config, data_root, overrides)
    if not data.get("root"):
        raise TagsegError("config.yaml has no data.root (pass --data-root)")
    data["root"] = str(resolve_data_root(str(data["root"]), run.run_dir))
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), data))
    except OmegaConfBaseException as exc:
        raise TagsegError(f"invalid data section in config.yaml: {exc}") from exc
    if cfg.dataset == "synthetic":  # read what is there; a report never generates data
        return read_folder(cfg.root, run.split, cfg.max_images)
    return build_index(cfg, run.split)
