"""Training hooks: the operating point stored with the model, and the final checkpoint after it.

The operating point is the series-score threshold above which a series is called positive
(``TEST.DSA.OPERATING_POINT``: ``"youden"`` maximises sensitivity + specificity - 1,
``"spec95"`` takes the highest sensitivity at a false-positive rate <= 5%). It is chosen on the
validation data (``DATASETS.TEST[0]``) at each evaluation, written to
``OUTPUT_DIR/operating_point.json`` and saved inside every later checkpoint under the key
``"operating_point"`` (plain numbers, strings and booleans, so it loads with ``weights_only=True``):
``torch.load(path, weights_only=True)["operating_point"]["threshold"]``. Its
``"series_optimization"`` says whether the threshold applies to scores after series optimisation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from detectron2.engine import hooks

from ..errors import DSAInputError
from ..evaluation.metrics import roc_statistics
from ..io.atomic import atomic_write_json

OPERATING_POINTS = ("youden", "spec95")
OPERATING_POINT_FILE = "operating_point.json"


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


class FinalCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer, but ``model_final`` is saved in ``after_train``.

    Registered after the evaluation hooks, so ``model_final.pth`` is written after the final
    evaluation and carries that evaluation's operating point, and only when every iteration
    succeeded (a failed last iteration leaves no ``model_final``).
    """

    def after_step(self) -> None:
        if self.trainer.iter + 1 < self.trainer.max_iter:
            super().after_step()

    def after_train(self) -> None:
        # TrainerBase.train sets iter = max_iter only after the last iteration completed.
        if self.trainer.iter >= self.trainer.max_iter:
            self.step(self.trainer.max_iter - 1)


class ResumableBestCheckpointer(hooks.BestCheckpointer):
    """Detectron2's BestCheckpointer whose best score survives ``--resume``.

    Detectron2's hook keeps the best score in memory only, so after a resume the first evaluation
    always replaced ``model_best.pth``, even with a worse model. Its state is saved with the
    trainer's (``TrainerBase.state_dict`` collects the hooks' states).
    """

    def state_dict(self) -> dict[str, Any]:
        if self.best_metric is None:
            return {}
        return {"best_metric": float(self.best_metric), "best_iter": int(self.best_iter)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_metric = state.get("best_metric")
        self.best_iter = state.get("best_iter")
