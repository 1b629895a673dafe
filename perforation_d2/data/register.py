"""Registering cohorts (and their splits) with Detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

A registered cohort is one dataset dict per frame (see ``docs/ARCHITECTURE.md``, "Dataset
dicts"). The cohort is validated once for all its names: when it is registered explicitly (so a
broken cohort fails right there with every problem listed, not in the middle of training), or,
for the cohorts found under ``$DETECTRON2_DATASETS``, on the first ``DatasetCatalog.get``.

Cohorts laid out as ``$DETECTRON2_DATASETS/<name>/cohort.json`` (frames relative to
``<name>/``, optionally ``<name>/splits.json`` from the ``split`` command) are registered lazily
when ``perforation_d2`` is imported (see :func:`register_cohorts_under`), under ``<name>``,
``<name>_fold{k}_train`` / ``_val`` and ``<name>_loco_<heldout>_train`` / ``_val``. See
``datasets/README.md``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DSAInputError
from .cohort import PathLike, frames_by_video, gc_paused, load_cohort
from .cohort_writer import COHORT_FILE
from .splits import SPLITS_FILE, Splits, read_splits

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
                # The series' frame interval (None: not recorded): clips spanning a fixed duration need it.
                "series_frame_time_ms": video.get("frame_time_ms"),
                "annotations": [dict(box) for box in boxes.get(image["id"], [])],
            })
    return dicts


class _CohortSource:
    """One cohort file, read and validated once, when a dataset name of it is first needed.

    ``DatasetCatalog.get`` of any of its names (the cohort, its folds) reads it; the fold names also
    check the splits against it (once). Problems raise :class:`DSAInputError` there, naming the file.
    """

    def __init__(self, json_path: Path, image_root: Path, check_images: bool, splits: Splits | None = None):
        self.json_path, self.image_root, self.check_images, self.splits = json_path, image_root, check_images, splits
        self._cohort: dict | None = None
        self._splits_checked = False

    def cohort(self, with_splits: bool = False) -> dict:
        if self._cohort is None:
            self._cohort = load_cohort(self.json_path, self.image_root, self.check_images)
        if with_splits and self.splits is not None and not self._splits_checked:
            self.splits.check_cohort(self._cohort)
            self._splits_checked = True
        return self._cohort

    def dataset_dicts(self, video_ids: list[int] | None) -> list[dict]:
        return cohort_dataset_dicts(self.cohort(with_splits=video_ids is not None), self.image_root, video_ids)


def _register(name: str, source: _CohortSource, video_ids: list[int] | None = None) -> None:
    """Register (or re-register, for the same files) one dataset name; idempotent. Reads nothing."""
    json_file, image_root = source.json_path, source.image_root
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") != str(json_file) or meta.get("image_root") != str(image_root):
            raise DSAInputError(
                f"{json_file}: cannot register dataset '{name}': that name is already registered "
                f"for {meta.get('json_file', 'another dataset')}; choose another name."
            )
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: source.dataset_dicts(video_ids))
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
    source = _CohortSource(*_paths(json_file, image_root), check_images=True)
    source.cohort()
    _register(name, source)


def safe_name(text: str) -> str:
    """``text`` with every run of characters other than ``[0-9A-Za-z_.-]`` replaced by ``_``: safe in
    a dataset or file name."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", text)


def _register_splits(cohort_name: str, source: _CohortSource) -> list[str]:
    """Register the train and val names of every split of ``source.splits``; returns them."""
    assert source.splits is not None
    parts: dict[str, list[int]] = {}
    for split in source.splits.all:
        suffix = f"fold{split.key}" if split.kind == "fold" else f"loco_{safe_name(str(split.key))}"
        for part in ("train", "val"):
            name = f"{cohort_name}_{suffix}_{part}"
            if name in parts:
                raise DSAInputError(f"{source.splits.path}: held-out cohorts whose names differ only in "
                                    f"punctuation give the same dataset name '{name}'; rename one of them.")
            parts[name] = sorted(split.video_ids(part))
    for name, video_ids in parts.items():
        _register(name, source, video_ids)
    return list(parts)


def register_dsa_splits(
    splits_json: PathLike, cohort_name: str, json_file: PathLike, image_root: PathLike | None = None
) -> list[str]:
    """Register ``<cohort_name>_fold{k}_train`` / ``_val`` (and ``_loco_<heldout>_*``) from a splits file.

    Returns the registered names. The splits must match the cohort (every id known, every
    series in one validation fold), else :class:`DSAInputError`.
    """
    source = _CohortSource(*_paths(json_file, image_root), check_images=True)
    source.splits = read_splits(splits_json, source.cohort())
    return _register_splits(cohort_name, source)


def register_cohort_dir(
    folder: PathLike, name: str | None = None, check_images: bool = True, lazy: bool = False
) -> list[str]:
    """Register ``folder/cohort.json`` as ``name`` (default: the folder's name) and its ``splits.json``.

    The cohort is validated once for all the names (``check_images=False`` skips the existence
    check of every frame file, the slow part on a large cohort): right away, or with ``lazy`` on
    the first ``DatasetCatalog.get`` of one of them (only the small splits file is read now, for
    the fold names). Returns the registered names.
    """
    folder = Path(folder).resolve()
    name = name or folder.name
    source = _CohortSource(folder / COHORT_FILE, folder, check_images)
    splits_file = folder / SPLITS_FILE
    has_splits = splits_file.exists()
    if lazy:
        try:
            source.splits = read_splits(splits_file) if has_splits else None
        except DSAInputError as err:
            logger.warning(f"perforation_d2: the folds of {folder} are not registered: {err}")
    else:
        source.splits = read_splits(splits_file, source.cohort()) if has_splits else None
    _register(name, source)
    return [name] + (_register_splits(name, source) if source.splits is not None else [])


def register_cohorts_under(root: PathLike | None = None, check_images: bool = True) -> list[str]:
    """Register the names of every ``<root>/<name>/cohort.json`` not registered yet; returns them.

    ``root`` defaults to ``$DETECTRON2_DATASETS`` (else ``./datasets``), as Detectron2's builtin
    datasets. Called on ``import perforation_d2`` (in every command and DDP worker) with
    ``check_images=False``. Registration is lazy, as Detectron2's own: the cohort JSON is read and
    validated on the first ``DatasetCatalog.get`` of one of its names (raising the usual
    paragraph there), and frame files are not stat-ed (a missing frame fails when it is read,
    naming the file; the ``validate`` command or an explicit ``register_*`` call checks them all up
    front). Any failure of one cohort folder here only logs a warning naming it: a broken cohort
    never stops a command that does not use it.
    """
    root = Path(os.path.expanduser(root if root is not None else os.getenv("DETECTRON2_DATASETS", "datasets")))
    names: list[str] = []
    try:
        entries = sorted(root.iterdir()) if root.is_dir() else []
    except OSError as err:
        logger.warning(f"perforation_d2: cannot list the cohorts under {root}: {err}")
        return []
    registered = set(DatasetCatalog.list())
    for folder in entries:
        try:
            if folder.name in registered or not (folder / COHORT_FILE).is_file():
                continue
            names += register_cohort_dir(folder, check_images=check_images, lazy=True)
        except Exception as err:  # any failure of one cohort (not only DSAInputError) is a warning
            logger.warning(f"perforation_d2: datasets of {folder} not registered: {err}")
    return names
