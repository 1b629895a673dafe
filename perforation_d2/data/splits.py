"""Patient-level K-fold and leave-one-cohort-out splits, and the one reader of a splits file.

Series are split, patients are kept whole: scikit-learn's ``StratifiedGroupKFold`` with the
series label as the class and the patient as the group, so no patient is in two folds and the
positive and negative series are spread evenly over the folds. When the cohort has series from
more than one ``cohort`` (site), each site is also held out in turn (leave-one-cohort-out).

:func:`read_splits` parses and validates ``splits.json`` (written by the ``split`` command) for
registration, ``evaluate`` and ``compare`` alike.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import DSAInputError, format_problems
from ..io.json_io import read_json
from .cohort import series_labels

__all__ = ["SPLITS_FILE", "Split", "Splits", "leave_one_cohort_out", "make_patient_folds", "read_splits"]

SPLITS_FILE = "splits.json"
_PARTS = ("train", "val")


def _side(video_ids: list[int], labels: dict[int, int], patient_of: dict[int, str], side: str) -> dict:
    positives = sum(labels[v] for v in video_ids)
    return {
        f"{side}_video_ids": sorted(video_ids),
        f"{side}_patients": sorted({patient_of[v] for v in video_ids}),
        f"n_pos_{side}": positives,
        f"n_neg_{side}": len(video_ids) - positives,
    }


def make_patient_folds(cohort: dict, k: int, seed: int, source: str = "the cohort") -> list[dict]:
    """K patient-disjoint folds stratified by series label (validated cohort in, fold dicts out).

    Each fold: ``fold``, ``train_video_ids``, ``val_video_ids``, ``train_patients``,
    ``val_patients`` and ``n_pos_*`` / ``n_neg_*``. The same ``seed`` gives the same folds.
    """
    labels = series_labels(cohort)
    patient_of = {video["id"]: video["patient_id"] for video in cohort["videos"]}
    video_ids = [video["id"] for video in cohort["videos"]]
    patients_with = {c: {patient_of[v] for v in video_ids if labels[v] == c} for c in (0, 1)}
    num_patients = len(set(patient_of.values()))
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise DSAInputError(f"{source}: --folds must be an integer >= 2, got {k!r}.")
    limits = [
        (num_patients, "patients"),
        (len(patients_with[1]), "patients with a positive series"),
        (len(patients_with[0]), "patients with a negative series"),
    ]
    for count, what in limits:
        if k > count:
            raise DSAInputError(
                f"{source}: cannot make {k} patient-level folds with only {count} {what}: every "
                f"validation fold needs at least one; use --folds {max(2, count)} or fewer, or add patients."
            )
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    y = np.array([labels[v] for v in video_ids])
    groups = np.array([patient_of[v] for v in video_ids])
    folds = []
    for fold, (train_index, val_index) in enumerate(splitter.split(np.zeros(len(video_ids)), y, groups)):
        entry = {"fold": fold}
        entry.update(_side([video_ids[i] for i in train_index], labels, patient_of, "train"))
        entry.update(_side([video_ids[i] for i in val_index], labels, patient_of, "val"))
        folds.append(entry)
    return folds


def leave_one_cohort_out(cohort: dict, source: str = "the cohort") -> list[dict]:
    """One split per distinct ``cohort`` value: its series are validation, the others training.

    Empty when the cohort has a single site. A patient with series in two sites would leak
    across the split and raises :class:`DSAInputError`.
    """
    labels = series_labels(cohort)
    patient_of = {video["id"]: video["patient_id"] for video in cohort["videos"]}
    site_of = {video["id"]: video["cohort"] for video in cohort["videos"]}
    sites = sorted(set(site_of.values()))
    if len(sites) < 2:
        return []
    sites_of_patient: dict[str, set[str]] = defaultdict(set)
    for vid, patient in patient_of.items():
        sites_of_patient[patient].add(site_of[vid])
    shared = sorted(p for p, s in sites_of_patient.items() if len(s) > 1)
    if shared:
        raise DSAInputError(
            f"{source}: patient ids {shared[:10]} have series in more than one cohort, so "
            "leave-one-cohort-out would put the same patient in training and validation; give "
            "each site's patients distinct ids."
        )
    splits = []
    for site in sites:
        entry = {"heldout": site}
        entry.update(_side([v for v in site_of if site_of[v] != site], labels, patient_of, "train"))
        entry.update(_side([v for v in site_of if site_of[v] == site], labels, patient_of, "val"))
        splits.append(entry)
    return splits


# ---- reading a splits file ------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """One split of a splits file: a fold (``key`` its number) or a held-out cohort (``key`` its name)."""

    kind: str  # "fold" | "loco"
    key: int | str
    train_video_ids: list[int]
    val_video_ids: list[int]

    @property
    def description(self) -> str:
        return f"fold {self.key}" if self.kind == "fold" else f"held-out cohort {self.key}"

    def video_ids(self, part: str) -> list[int]:
        """The series of ``part`` ("train" or "val")."""
        if part not in _PARTS:
            raise ValueError(f"part must be 'train' or 'val', got {part!r}")
        return self.train_video_ids if part == "train" else self.val_video_ids


@dataclass(frozen=True)
class Splits:
    """A validated splits file: its folds and leave-one-cohort-out splits, in file order."""

    path: Path
    folds: tuple[Split, ...]
    loco: tuple[Split, ...]

    @property
    def all(self) -> tuple[Split, ...]:
        return self.folds + self.loco

    def fold(self, k: int) -> Split:
        """Fold ``k``; :class:`DSAInputError` naming the available folds when there is none."""
        return self._find(self.folds, "fold", str(k))

    def heldout(self, name: str) -> Split:
        """The split holding out cohort ``name``."""
        return self._find(self.loco, "held-out cohort", str(name))

    def _find(self, entries: tuple[Split, ...], what: str, wanted: str) -> Split:
        for entry in entries:
            if str(entry.key) == wanted:
                return entry
        available = ", ".join(str(entry.key) for entry in entries) or "none"
        raise DSAInputError(f"{self.path}: has no {what} {wanted} (available: {available}).")

    def check_cohort(self, cohort: dict) -> None:
        """Raise :class:`DSAInputError` unless every id names a series of the validated ``cohort``
        and every series of it lies in one validation fold."""
        problems = _cohort_problems(self, cohort)
        if problems:
            raise DSAInputError(format_problems(str(self.path), problems))


def _id_list_problem(ids: Any) -> str | None:
    """Why ``ids`` is not a list of distinct video ids (None when it is); linear in its length."""
    if not isinstance(ids, list):
        return f"must be a list of video ids, got {type(ids).__name__}"
    bad = [i for i in ids if type(i) is not int]
    if bad:
        return f"must be a list of video ids (integers), got {bad[0]!r}"
    if len(set(ids)) != len(ids):
        return "lists a video id twice"
    return None


def _parse(data: Any) -> tuple[list[Split], list[Split], list[str]]:
    if not isinstance(data, dict) or not isinstance(data.get("folds"), list):
        return [], [], ["not a splits file: expected a JSON object with a 'folds' list "
                        "(written by `python -m perforation_d2 split`)"]
    loco = data.get("loco")
    problems: list[str] = []
    if loco is not None and not isinstance(loco, list):
        problems.append(f"'loco' must be a list or null, got {type(loco).__name__}")
        loco = None
    parsed: dict[str, list[Split]] = {"fold": [], "loco": []}
    entries = [("fold", i, e) for i, e in enumerate(data["folds"])] + [("loco", i, e) for i, e in enumerate(loco or [])]
    for kind, index, entry in entries:
        key_name = "fold" if kind == "fold" else "heldout"
        key = entry.get(key_name) if isinstance(entry, dict) else None
        if kind == "fold":
            key_ok = type(key) is int and key >= 0
            label = f"fold {key}" if key_ok else f"fold entry #{index}"
        else:
            key_ok = isinstance(key, str) and key != ""
            label = f"held-out cohort {key}" if key_ok else f"loco entry #{index}"
        if not isinstance(entry, dict):
            problems.append(f"{label}: malformed entry (not a JSON object)")
            continue
        if not key_ok:
            wanted = "a non-negative integer" if kind == "fold" else "a non-empty string"
            problems.append(f"{label}: '{key_name}' must be {wanted}, got {key!r}")
        sides: dict[str, list[int]] = {}
        for part in _PARTS:
            field = f"{part}_video_ids"
            if field not in entry:
                problems.append(f"{label}: missing '{field}'")
                continue
            problem = _id_list_problem(entry[field])
            if problem:
                problems.append(f"{label}: '{field}' {problem}")
            else:
                sides[part] = entry[field]
        if len(sides) == 2:
            overlap = sorted(set(sides["train"]) & set(sides["val"]))
            if overlap:
                problems.append(f"{label}: video ids {overlap[:10]} are both in train and val")
        if key_ok and len(sides) == 2:
            parsed[kind].append(Split(kind, key, sides["train"], sides["val"]))
    for kind, what in (("fold", "fold"), ("loco", "held-out cohort")):
        counts = Counter(split.key for split in parsed[kind])
        repeated = sorted(str(k) for k, n in counts.items() if n > 1)
        if repeated:
            problems.append(f"{what} {', '.join(repeated)} is listed more than once")
    return parsed["fold"], parsed["loco"], problems


def _cohort_problems(splits: Splits, cohort: dict) -> list[str]:
    known = {video["id"] for video in cohort["videos"]}
    problems = []
    for split in splits.all:
        for part in _PARTS:
            unknown = sorted(set(split.video_ids(part)) - known)
            if unknown:
                problems.append(f"{split.description}: {part}_video_ids names video ids {unknown[:10]} "
                                "that the cohort does not have")
    covered = {vid for split in splits.folds for vid in split.val_video_ids}
    uncovered = sorted(known - covered)
    if splits.folds and uncovered:
        problems.append(f"video ids {uncovered[:10]} of the cohort are in no validation fold "
                        "(the cohort changed since the split; run the split command again)")
    return problems


def read_splits(path: str | os.PathLike, cohort: dict | None = None) -> Splits:
    """Parse and validate a splits file; with ``cohort`` (validated) also check it against the cohort.

    Every problem (missing file, bad JSON, wrong types, a series on both sides, a fold listed
    twice and, with ``cohort``, unknown ids or series in no validation fold) raises one
    :class:`DSAInputError` naming ``path`` and listing them all.
    """
    path = Path(path)
    data = read_json(path, "splits file", "A splits file is written by `python -m perforation_d2 split`.")
    folds, loco, problems = _parse(data)
    if problems:
        raise DSAInputError(format_problems(str(path), problems))
    splits = Splits(path, tuple(folds), tuple(loco))
    if cohort is not None:
        splits.check_cohort(cohort)
    return splits
