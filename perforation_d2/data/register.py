"""Registering cohorts (and their splits) with Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

A registered cohort is one dataset dict per frame (see ``docs/ARCHITECTURE.md``, "Dataset
dicts"). The cohort is validated once, when it is registered, so a broken cohort fails right
there with every problem listed, not in the middle of training.

Cohorts laid out as ``$DETECTRON2_DATASETS/<name>/cohort.json`` (frames relative to
``<name>/``, optionally ``<name>/splits.json`` from the ``split`` command) are registered when
``perforation_d2`` is imported (without the frame-file existence check, see
:func:`register_cohorts_under`), under ``<name>``, ``<name>_fold{k}_train`` / ``_val`` and
``<name>_loco_<heldout>_train`` / ``_val``. See ``datasets/README.md``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DSAInputError, format_problems
from .cohort import PathLike, frames_by_video, gc_paused, load_cohort, read_cohort_json

__all__ = [
    "COHORT_FILE",
    "SPLITS_FILE",
    "cohort_dataset_dicts",
    "register_cohort_dir",
    "register_cohorts_under",
    "register_dsa_cohort",
    "register_dsa_splits",
]

logger = logging.getLogger(__name__)

COHORT_FILE = "cohort.json"
SPLITS_FILE = "splits.json"


def cohort_dataset_dicts(cohort: dict, image_root: PathLike, video_ids: Iterable[int] | None = None) -> list[dict]:
    """One Detectron2 dict per frame of every series of a validated cohort (or of ``video_ids``)."""
    with gc_paused():
        return _dataset_dicts(cohort, image_root, video_ids)


def _dataset_dicts(cohort: dict, image_root: PathLike, video_ids: Iterable[int] | None) -> list[dict]:
    root = os.path.abspath(image_root)
    boxes: dict[int, list[dict]] = {}
    for ann in cohort["annotations"]:
        boxes.setdefault(ann["image_id"], []).append(
            {"bbox": [float(v) for v in ann["bbox"]], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        )
    frames = frames_by_video(cohort)
    wanted = None if video_ids is None else set(video_ids)
    dicts = []
    for video in cohort["videos"]:
        vid = video["id"]
        if wanted is not None and vid not in wanted:
            continue
        series = frames[vid]
        file_names = [os.path.join(root, image["file_name"]) for image in series]
        for image, file_name in zip(series, file_names):
            dicts.append({
                "file_name": file_name,
                "image_id": image["id"],
                "height": image["height"],
                "width": image["width"],
                "video_id": vid,
                "frame_id": image["frame_id"],
                "patient_id": video["patient_id"],
                "cohort": video["cohort"],
                "series_file_names": file_names,
                "num_frames": len(series),
                "annotations": [dict(box) for box in boxes.get(image["id"], [])],
            })
    return dicts


def _register(name: str, cohort: dict, json_file: Path, image_root: Path, video_ids: list[int] | None) -> None:
    """Register (or re-register, for the same files) one dataset name; idempotent."""
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") != str(json_file) or meta.get("image_root") != str(image_root):
            raise DSAInputError(
                f"{json_file}: cannot register dataset '{name}': that name is already registered "
                f"for {meta.get('json_file', 'another dataset')}; choose another name."
            )
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: cohort_dataset_dicts(cohort, image_root, video_ids))
    metadata = {"json_file": str(json_file), "image_root": str(image_root), "evaluator_type": "dsa_series"}
    if video_ids is not None:
        # The evaluator scores only these series of the cohort file.
        metadata["video_ids"] = list(video_ids)
    MetadataCatalog.get(name).set(thing_classes=["perforation"], **metadata)


def _paths(json_file: PathLike, image_root: PathLike | None) -> tuple[Path, Path]:
    json_path = Path(json_file).resolve()
    return json_path, Path(image_root).resolve() if image_root is not None else json_path.parent


def register_dsa_cohort(name: str, json_file: PathLike, image_root: PathLike | None = None) -> None:
    """Validate the cohort (raises :class:`DSAInputError` listing every problem) and register it.

    ``image_root`` defaults to the folder of ``json_file``. Registering the same name again for
    the same files re-validates and replaces it; for other files it is an error.
    """
    json_path, root = _paths(json_file, image_root)
    cohort = load_cohort(json_path, root)
    _register(name, cohort, json_path, root, None)


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than ``[0-9A-Za-z_.-]`` replaced by ``_``: safe in
    a dataset or file name."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text)


def _split_problems(splits: object, cohort: dict) -> list[str]:
    if not isinstance(splits, dict) or not isinstance(splits.get("folds"), list):
        return ["not a splits file: expected a JSON object with a 'folds' list (written by the split command)"]
    known = {video["id"] for video in cohort["videos"]}
    problems = []
    entries = [("fold", f) for f in splits["folds"]] + [("loco", e) for e in splits.get("loco") or []]
    for kind, entry in entries:
        label = f"{kind} {entry.get('fold', entry.get('heldout'))}" if isinstance(entry, dict) else kind
        if not isinstance(entry, dict) or ("fold" if kind == "fold" else "heldout") not in entry:
            problems.append(f"{label}: malformed entry")
            continue
        sides = {}
        for side in ("train_video_ids", "val_video_ids"):
            ids = entry.get(side)
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                problems.append(f"{label}: '{side}' must be a list of video ids")
                ids = []
            unknown = sorted(set(ids) - known)
            if unknown:
                problems.append(f"{label}: {side} names video ids {unknown[:10]} that the cohort does not have")
            sides[side] = set(ids)
        overlap = sorted(sides["train_video_ids"] & sides["val_video_ids"])
        if overlap:
            problems.append(f"{label}: video ids {overlap[:10]} are both in train and val")
    covered = set().union(*(set(f.get("val_video_ids") or []) for f in splits["folds"] if isinstance(f, dict)))
    uncovered = sorted(known - covered)
    if splits["folds"] and uncovered:
        problems.append(f"video ids {uncovered[:10]} of the cohort are in no validation fold "
                        "(the cohort changed since the split; run the split command again)")
    return problems


def _register_splits(splits_json: Path, cohort_name: str, cohort: dict, json_path: Path, root: Path) -> list[str]:
    splits = read_cohort_json(splits_json)
    problems = _split_problems(splits, cohort)
    if problems:
        raise DSAInputError(format_problems(str(splits_json), problems))
    names = []
    parts = [(f"fold{fold['fold']}", fold) for fold in splits["folds"]]
    parts += [(f"loco_{safe_name(str(entry['heldout']))}", entry) for entry in splits.get("loco") or []]
    for suffix, entry in parts:
        for side in ("train", "val"):
            name = f"{cohort_name}_{suffix}_{side}"
            _register(name, cohort, json_path, root, sorted(entry[f"{side}_video_ids"]))
            names.append(name)
    return names


def register_dsa_splits(
    splits_json: PathLike, cohort_name: str, json_file: PathLike, image_root: PathLike | None = None
) -> list[str]:
    """Register ``<cohort_name>_fold{k}_train`` / ``_val`` (and ``_loco_<heldout>_*``) from a splits file.

    Returns the registered names. The splits must match the cohort (every id known, every
    series in one validation fold), else :class:`DSAInputError`.
    """
    json_path, root = _paths(json_file, image_root)
    cohort = load_cohort(json_path, root)
    return _register_splits(Path(splits_json), cohort_name, cohort, json_path, root)


def register_cohort_dir(folder: PathLike, name: str | None = None, check_images: bool = True) -> list[str]:
    """Register ``folder/cohort.json`` as ``name`` (default: the folder's name) and its ``splits.json``.

    The cohort is validated once for all the names (``check_images=False`` skips the existence
    check of every frame file, the slow part on a large cohort). Returns the registered names.
    """
    folder = Path(folder).resolve()
    name = name or folder.name
    json_path = folder / COHORT_FILE
    cohort = load_cohort(json_path, folder, check_images)
    _register(name, cohort, json_path, folder, None)
    names = [name]
    if (folder / SPLITS_FILE).exists():
        names += _register_splits(folder / SPLITS_FILE, name, cohort, json_path, folder)
    return names


def register_cohorts_under(root: PathLike | None = None, check_images: bool = True) -> list[str]:
    """Register every ``<root>/<name>/cohort.json`` not registered yet; returns the new names.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ``./datasets``), as Detectron2's builtin
    datasets. Called on ``import perforation_d2`` (in every command and DDP worker) with
    ``check_images=False``, so that importing stays cheap: the JSON is fully validated but frame
    files are not stat-ed (a missing frame fails when it is read, naming the file; the
    ``validate`` command or an explicit ``register_*`` call checks them all up front). A broken
    cohort only logs a warning naming the file (register it explicitly to get the error).
    """
    root = Path(os.path.expanduser(root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")))
    if not root.is_dir():
        return []
    registered = set(DatasetCatalog.list())
    names: list[str] = []
    for folder in sorted(p for p in root.iterdir() if (p / COHORT_FILE).is_file()):
        if folder.name in registered:
            continue
        try:
            names += register_cohort_dir(folder, check_images=check_images)
        except DSAInputError as err:
            logger.warning(f"perforation_d2: datasets of {folder} not registered: {err}")
    return names
