"""Which series ``evaluate`` and ``compare`` score: the whole cohort, or one split of a splits file.

Predictions of one fold's validation run cover only that fold's series, so ``--splits SPLITS.json
--fold K`` (or ``--loco HELDOUT``; the file of the ``split`` command) restricts the cohort to
that split's validation (``--part train``: training) series, and predictions on frames of the
other series are ignored (said on stderr). Without a split, a predictions file that leaves some
series without any prediction gets a warning: those series score 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.cohort import load_cohort
from ..data.splits import read_splits
from ..errors import DSAInputError
from .cohort_index import CohortIndex, restrict_cohort
from .metrics import SeriesEvaluation, evaluate_series, printed_metric_warnings
from .predictions import read_predictions_json


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--splits SPLITS.json`` with ``--fold K`` or ``--loco HELDOUT``, and ``--part val|train``."""
    group = parser.add_argument_group("evaluating one split (series of other splits are left out)")
    group.add_argument("--splits", metavar="SPLITS.json", help="splits file written by the split command")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--fold", type=int, metavar="K", help="the series of fold K")
    choice.add_argument("--loco", metavar="HELDOUT", help="the series of the leave-one-cohort-out split of HELDOUT")
    group.add_argument("--part", choices=("val", "train"), default="val",
                       help="the validation (default) or training series of that split")


def check_split_arguments(args: argparse.Namespace) -> None:
    """The split arguments make sense together (checked before any file is read)."""
    if args.splits is None and (args.fold is not None or args.loco is not None):
        raise DSAInputError("--fold and --loco select a split of a splits file: pass --splits SPLITS.json.")
    if args.splits is not None and args.fold is None and args.loco is None:
        raise DSAInputError(f"{args.splits}: say which split to evaluate with --fold K or --loco HELDOUT.")


@dataclass
class Selection:
    """The cohort of ``--gt``, the part of it that is scored, and a description of that part."""

    full_cohort: dict[str, Any]
    cohort: dict[str, Any]
    split: str | None  # e.g. "fold 0, val series"; None: the whole cohort


def select_series(args: argparse.Namespace) -> Selection:
    """Load ``args.gt`` and restrict it to the split that the split arguments select."""
    check_split_arguments(args)
    full_cohort = load_cohort(args.gt, check_images=False)
    if args.splits is None:
        return Selection(full_cohort, full_cohort, None)
    splits = read_splits(args.splits, full_cohort)
    split = splits.fold(args.fold) if args.fold is not None else splits.heldout(args.loco)
    video_ids = split.video_ids(args.part)
    if not video_ids:
        raise DSAInputError(f"{args.splits}: {split.description} has no {args.part} series.")
    return Selection(full_cohort, restrict_cohort(full_cohort, video_ids), f"{split.description}, {args.part} series")


def predictions_in_split(predictions: list[Any], selection: Selection, source: str) -> list[Any]:
    """``predictions`` without those on frames outside the selected series (reported on stderr).

    Entries on unknown frames and malformed entries are kept, for the schema check to report.
    """
    if selection.split is None:
        return predictions
    outside = ({image["id"] for image in selection.full_cohort["images"]}
               - {image["id"] for image in selection.cohort["images"]})
    kept = [p for p in predictions
            if not (isinstance(p, dict) and type(p.get("image_id")) is int and p["image_id"] in outside)]
    if len(kept) < len(predictions):
        print(f"note: {source}: ignored {len(predictions) - len(kept)} predictions on frames of series outside "
              "the selected split.", file=sys.stderr)
    return kept


def warn_series_without_predictions(
    cohort: Mapping[str, Any], predictions: list[dict[str, Any]], source: str, split: str | None
) -> None:
    """Warn when some, not all, series of ``cohort`` have no prediction on any frame (they score 0).

    ``predictions`` must have passed the schema check against ``cohort`` (every ``image_id`` a frame of it).
    """
    video_of_image = {image["id"]: image["video_id"] for image in cohort["images"]}
    covered = {video_of_image[p["image_id"]] for p in predictions}
    missing = [video["id"] for video in cohort["videos"] if video["id"] not in covered]
    if not missing or len(missing) == len(cohort["videos"]):
        return
    hint = ("" if split else " If these are the predictions of one fold's validation run, pass --splits SPLITS.json "
            "--fold K so that only that fold's series are scored.")
    print(f"warning: {source}: {len(missing)} of {len(cohort['videos'])} series have no prediction on any frame "
          f"(e.g. video ids {missing[:5]}) and score 0.{hint}", file=sys.stderr)


def evaluate_files(selection: Selection, paths: Sequence[str | os.PathLike], series_optimization: bool = True,
                   index: CohortIndex | None = None) -> list[SeriesEvaluation]:
    """Read and score each predictions file of ``paths`` on the selected series (warnings on stderr)."""
    index = index if index is not None else CohortIndex(selection.cohort)
    predictions = [predictions_in_split(read_predictions_json(path), selection, str(path)) for path in paths]
    with printed_metric_warnings():
        evaluations = [evaluate_series(index, preds, series_optimization, source=str(path))
                       for path, preds in zip(paths, predictions)]
    for path, preds in zip(paths, predictions):
        warn_series_without_predictions(selection.cohort, preds, str(path), selection.split)
    return evaluations
