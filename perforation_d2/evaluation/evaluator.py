"""``DSASeriesEvaluator``: the series-level metrics as a Detectron2 ``DatasetEvaluator``.

Used by the trainer's ``build_evaluator`` for datasets whose metadata says
``evaluator_type="dsa_series"`` (and directly by ``inference_on_dataset``). It keeps the top
detection of every frame (as COCO's evaluator keeps all of them), gathers them from every
worker, applies series optimisation and computes :func:`compute_series_metrics` on the cohort
behind the dataset, restricted to the series of that dataset (a fold's validation split holds a
subset of the cohort's series).
"""

from __future__ import annotations

import itertools
import logging
import os
import warnings
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.cohort import load_cohort
from ..io.atomic import atomic_write_json
from .cohort_index import restrict_cohort
from .metrics import DSAMetricWarning, evaluate_series, scalar_metrics
from .plots import save_evaluation_plots
from .predictions import top_detection_to_coco

logger = logging.getLogger(__name__)


class DSASeriesEvaluator(DatasetEvaluator):
    """Series-level classification and localisation metrics of a DSA dataset.

    Args:
        dataset_name: a registered dataset whose metadata has ``json_file`` (the cohort) and whose
            dataset dicts carry ``video_id``.
        output_dir: where ``predictions.json``, ``series_scores.json``, ``metrics.json``,
            ``roc.png`` and ``pr.png`` are written (replacing earlier ones); None writes nothing.
        distributed: gather the predictions of every worker and evaluate on the main one.
        series_optimization: apply series optimisation before scoring.

    ``evaluate()`` returns ``{"dsa": {metric: float}}`` with the scalar metrics that are defined,
    so that they reach Detectron2's event storage and TensorBoard.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        distributed: bool = True,
        series_optimization: bool = True,
    ):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._series_optimization = series_optimization
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for frame_input, output in zip(inputs, outputs):
            self._predictions.extend(top_detection_to_coco(output["instances"], frame_input["image_id"]))

    def _cohort(self) -> dict[str, Any]:
        json_file = MetadataCatalog.get(self._dataset_name).json_file
        video_ids = {record["video_id"] for record in DatasetCatalog.get(self._dataset_name)}
        return restrict_cohort(load_cohort(json_file, check_images=False), video_ids)

    def evaluate(self) -> dict[str, dict[str, float]]:
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._predictions, dst=0)
            if not comm.is_main_process():
                return {}
            predictions = list(itertools.chain(*gathered))
        else:
            predictions = list(self._predictions)
        # Gathering order depends on the number of workers; files and ties must not.
        predictions.sort(key=lambda p: p["image_id"])

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DSAMetricWarning)
            evaluation = evaluate_series(
                self._cohort(), predictions, self._series_optimization,
                source=f"predictions on {self._dataset_name}",
            )
        for warning in caught:
            logger.warning(str(warning.message))

        metrics = evaluation.metrics
        if self._output_dir:
            # overwrite=True on purpose: during training this evaluator runs every EVAL_PERIOD into
            # the same inference/<dataset>/ folder, and the latest evaluation is the one that counts
            # (the spec95 operating point reads series_scores.json right after). The files are
            # still written atomically, so a reader never sees a half-written one.
            os.makedirs(self._output_dir, exist_ok=True)
            atomic_write_json(os.path.join(self._output_dir, "predictions.json"), predictions, overwrite=True)
            atomic_write_json(os.path.join(self._output_dir, "series_scores.json"), metrics["series_scores"],
                              overwrite=True)
            atomic_write_json(os.path.join(self._output_dir, "metrics.json"), metrics, overwrite=True)
            save_evaluation_plots(self._output_dir, evaluation, title_suffix=f" ({self._dataset_name})",
                                  overwrite=True)
        results = scalar_metrics(metrics)
        logger.info(
            "DSA series evaluation of %s (%d series, SO %s): %s", self._dataset_name, metrics["num_series"],
            "on" if self._series_optimization else "off",
            ", ".join(f"{k}={v:.4f}" for k, v in results.items()),
        )
        return {"dsa": results}
