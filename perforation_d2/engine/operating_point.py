"""The operating point stored with a trained model: written by the trainer, read by ``predict``.

The operating point is the series-score threshold above which a series is called positive
(``TEST.DSA.OPERATING_POINT``: ``"youden"`` maximises sensitivity + specificity - 1,
``"spec95"`` takes the highest sensitivity at a false-positive rate <= 5%). It is chosen on the
validation data (``DATASETS.TEST[0]``) at each evaluation, written to
``OUTPUT_DIR/operating_point.json`` and saved inside every later checkpoint under the key
``"operating_point"`` (plain numbers, strings and booleans, so it loads with ``weights_only=True``):
``torch.load(path, weights_only=True)["operating_point"]["threshold"]``. Its
``"series_optimization"`` says whether the threshold applies to scores after series optimisation.
:func:`stored_threshold` reads it back: from the checkpoint, else from the file beside the weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DSAInputError
from ..evaluation.roc import roc_statistics
from ..io.atomic import atomic_write_json
from ..io.json_io import read_json

OPERATING_POINTS = ("youden", "spec95")
OPERATING_POINT_FILE = "operating_point.json"
CHECKPOINT_KEY = "operating_point"


class OperatingPoint:
    """The threshold chosen at the last evaluation; a checkpointable (``state_dict``) of plain values.

    ``series_optimization`` (``TEST.DSA.SERIES_OPTIMIZATION``) says whether the series scores the
    threshold was chosen on had series optimisation applied; it is stored with the threshold, as
    the threshold only means something on scores computed the same way.
    """

    def __init__(self, method: str, series_optimization: bool = True):
        if method not in OPERATING_POINTS:
            raise DSAInputError(
                f"config: unknown TEST.DSA.OPERATING_POINT {method!r}; valid choices: {', '.join(OPERATING_POINTS)}."
            )
        self.method = method
        self.series_optimization = bool(series_optimization)
        self.state: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)

    def update(
        self,
        metrics: Mapping[str, Any],
        dataset: str,
        iterations_trained: int,
        series_labels: Mapping[int, int] | None = None,
        series_scores: Mapping[Any, float] | None = None,
    ) -> bool:
        """Take the operating point from one evaluation's ``metrics`` (the evaluator's "dsa" dict).

        ``"youden"`` reads ``threshold`` / ``sensitivity`` / ``specificity`` from ``metrics``;
        ``"spec95"`` needs the series labels and scores. Returns False (state unchanged) when the
        evaluation defines no threshold (one class only, or no threshold better than chance).
        """
        if self.method == "youden":
            threshold = metrics.get("threshold")
            if threshold is None or not math.isfinite(threshold):
                return False
            point = (float(threshold), metrics.get("sensitivity"), metrics.get("specificity"))
        else:
            if not series_labels or not series_scores:
                return False
            video_ids = sorted(series_labels)
            labels = np.array([series_labels[v] for v in video_ids])
            scores = {int(k): float(s) for k, s in series_scores.items()}
            roc = roc_statistics(labels, np.array([scores.get(v, 0.0) for v in video_ids]))
            # None: one class only; +inf: no sensitivity above 0 at FPR <= 0.05.
            if roc.spec95_threshold is None or not math.isfinite(roc.spec95_threshold):
                return False
            point = (roc.spec95_threshold, roc.sens_at_95spec, roc.spec95_specificity)
        threshold, sensitivity, specificity = point
        self.state = {
            "method": self.method,
            "threshold": threshold,
            "sensitivity": None if sensitivity is None else float(sensitivity),
            "specificity": None if specificity is None else float(specificity),
            "series_optimization": self.series_optimization,
            "dataset": dataset,
            "iterations_trained": int(iterations_trained),
        }
        return True

    def write(self, output_dir: str) -> str:
        """Write ``operating_point.json`` (replacing the previous evaluation's) and return its path."""
        path = os.path.join(output_dir, OPERATING_POINT_FILE)
        atomic_write_json(path, self.state, overwrite=True)
        return path


@dataclass
class Threshold:
    """A decision threshold and where it came from."""

    value: float
    method: str  # "youden", "spec95" or "manual"
    source: str
    # Whether the scores the threshold was chosen on went through series optimisation: the
    # decision is only meaningful on scores computed the same way.
    series_optimization: bool = True


def _stored_point(point: Any, method: str) -> tuple[float, bool] | None:
    """``(threshold, series_optimization)`` of a stored operating point of ``method``, if any."""
    if isinstance(point, dict) and point.get("method") == method:
        value = point.get("threshold")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value), bool(point.get("series_optimization", True))
    return None


def stored_threshold(weights: str | os.PathLike, checkpoint: Mapping[str, Any], method: str) -> Threshold:
    """The ``method`` operating point stored with ``weights``: in the loaded ``checkpoint`` (its extras),
    else in ``operating_point.json`` beside the weights (as the trainer writes both)."""
    if method not in OPERATING_POINTS:
        raise DSAInputError(f"--operating-point {method!r}: valid choices are {', '.join(OPERATING_POINTS)}.")
    point = _stored_point(checkpoint.get(CHECKPOINT_KEY), method)
    if point is not None:
        return Threshold(point[0], method, f"{weights} (checkpoint)", point[1])
    side_file = Path(weights).resolve().parent / OPERATING_POINT_FILE
    if side_file.is_file():
        stored = read_json(side_file, "operating point file", "It is written by training beside the checkpoints.")
        point = _stored_point(stored, method)
        if point is not None:
            return Threshold(point[0], method, str(side_file), point[1])
    raise DSAInputError(
        f"{weights}: no {method} operating point is stored with these weights (neither in the checkpoint "
        f"nor in {side_file}); it is chosen on validation data during training (TEST.DSA.OPERATING_POINT "
        "with an evaluation set). Pass --threshold X to decide at a threshold of your choice."
    )
