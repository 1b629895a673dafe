"""``python -m perforation_d2 split``: patient-level K-fold and leave-one-cohort-out splits.

Series are split, patients are kept whole: scikit-learn's ``StratifiedGroupKFold`` with the
series label as the class and the patient as the group, so no patient is in two folds and the
positive and negative series are spread evenly over the folds. When the cohort has series from
more than one ``cohort`` (site), each site is also held out in turn (leave-one-cohort-out).

Writes ``DIR/splits.json``; put it next to ``cohort.json`` under ``$DETECTRON2_DATASETS/<name>/``
to have the folds registered as ``<name>_fold{k}_train`` / ``_val`` (see ``datasets/README.md``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import DSAInputError
from ..io.atomic import atomic_write_json, check_outputs_free
from .cohort import load_cohort, series_labels
from .register import SPLITS_FILE


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, metavar="COHORT.json", help="the cohort to split")
    parser.add_argument("--folds", type=int, required=True, metavar="K", help="number of folds (>= 2)")
    parser.add_argument("--seed", type=int, required=True, metavar="S", help="shuffling seed (same seed, same split)")
    parser.add_argument("--out", required=True, metavar="DIR", help=f"folder of the {SPLITS_FILE} to write")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder the frames are relative to (default: the cohort JSON's folder)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {SPLITS_FILE}")


def run(args: argparse.Namespace) -> int:
    out_file = Path(args.out) / SPLITS_FILE
    check_outputs_free([out_file], args.overwrite)
    cohort = load_cohort(args.cohort, args.image_root)
    source = str(args.cohort)
    splits = {
        "cohort": str(Path(args.cohort).resolve()),
        "seed": args.seed,
        "num_folds": args.folds,
        "folds": make_patient_folds(cohort, args.folds, args.seed, source),
        "loco": leave_one_cohort_out(cohort, source),
    }
    atomic_write_json(out_file, splits, overwrite=args.overwrite)
    for entry in splits["folds"]:
        print(f"fold {entry['fold']}: val {len(entry['val_patients'])} patients, "
              f"{entry['n_pos_val']} positive / {entry['n_neg_val']} negative series; "
              f"train {entry['n_pos_train']} / {entry['n_neg_train']}")
    for entry in splits["loco"]:
        print(f"held-out cohort {entry['heldout']}: val {entry['n_pos_val']} positive / "
              f"{entry['n_neg_val']} negative series")
    print(f"wrote {out_file}")
    return 0
