"""``python -m perforation_d2 split``: patient-level K-fold and leave-one-cohort-out splits.

Writes ``DIR/splits.json`` (see :mod:`perforation_d2.data.splits`); put it next to
``cohort.json`` under ``$DETECTRON2_DATASETS/<name>/`` to have the folds registered as
``<name>_fold{k}_train`` / ``_val`` (see ``datasets/README.md``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import bounded_int, seed
from ..data.cohort import load_cohort
from ..data.splits import SPLITS_FILE, leave_one_cohort_out, make_patient_folds
from ..errors import DSAInputError
from ..io.transaction import OutputTransaction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cohort", required=True, metavar="COHORT.json", help="the cohort to split")
    parser.add_argument("--folds", type=bounded_int(2, 1000, "a number of folds (an integer >= 2)"), required=True,
                        metavar="K", help="number of folds (>= 2)")
    parser.add_argument("--seed", type=seed, required=True, metavar="S", help="shuffling seed (same seed, same split)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help=f"folder of the {SPLITS_FILE} to write")
    parser.add_argument("--image-root", default=None, metavar="DIR",
                        help="folder the frames are relative to (default: the cohort JSON's folder)")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {SPLITS_FILE}")


def run(args: argparse.Namespace) -> int:
    transaction = OutputTransaction(args.out, "split", args.overwrite, names=[SPLITS_FILE])  # checked now
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise DSAInputError(f"{args.image_root}: --image-root must be an existing folder (nothing was written).")
    cohort = load_cohort(args.cohort, args.image_root)
    source = str(args.cohort)
    splits = {
        "cohort": str(Path(args.cohort).resolve()),
        "seed": args.seed,
        "num_folds": args.folds,
        "folds": make_patient_folds(cohort, args.folds, args.seed, source),
        "loco": leave_one_cohort_out(cohort, source),
    }
    with transaction:
        transaction.write_json(SPLITS_FILE, splits)
    for entry in splits["folds"]:
        print(f"fold {entry['fold']}: val {len(entry['val_patients'])} patients, "
              f"{entry['n_pos_val']} positive / {entry['n_neg_val']} negative series; "
              f"train {entry['n_pos_train']} / {entry['n_neg_train']}")
    for entry in splits["loco"]:
        print(f"held-out cohort {entry['heldout']}: val {entry['n_pos_val']} positive / "
              f"{entry['n_neg_val']} negative series")
    print(f"wrote {args.out / SPLITS_FILE}")
    return 0
