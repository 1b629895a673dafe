"""Inference over a registered cohort, series by series, for Detectron2 evaluators.

Detectron2's ``inference_on_dataset`` feeds a data loader's clips to the model one by one, so the
backbone runs T times per frame. Here each series is predicted whole by
:class:`~perforation_d2.modeling.series_inference.SeriesPredictor` (backbone once per frame, top-1
decoding) and the evaluator gets every frame's output; ``Trainer.test`` uses
:func:`cached_series_test` when ``TEST.DSA.CACHED_SERIES_INFERENCE`` is on. :func:`compare_precision`
checks a precision mode against strict FP32 on series decisions and kept boxes.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_context, print_csv_format
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.mapper import read_grey_frame, series_label
from ..data.prefetch import Prefetch
from ..modeling.precision import precision_from_cfg
from ..modeling.series_inference import PreparedSeries, SeriesPredictor, load_series_frames
from .matching import box_iou
from .predictions import predict_one_series

__all__ = [
    "PrecisionAgreement", "cached_series_test", "compare_precision", "inference_on_cohort", "iterate_series_predictions",
    "read_prepared_series", "series_of_dataset",
]

logger = logging.getLogger(__name__)


def series_of_dataset(dataset_dicts: Sequence[dict]) -> list[list[dict]]:
    """Group per-frame dataset dicts by series, frames in order, series in first-seen order."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    for record in dataset_dicts:
        grouped[record["video_id"]].append(record)
    return [sorted(records, key=lambda r: r["frame_id"]) for records in grouped.values()]


def read_prepared_series(predictor: SeriesPredictor, records: Sequence[dict],
                         loader: Callable[[str], np.ndarray] = read_grey_frame) -> PreparedSeries:
    """One series (its per-frame dataset dicts) read from disk and prepared for ``predictor``."""
    return predictor.prepare(load_series_frames(records[0], loader))


def iterate_series_predictions(
    predictor: SeriesPredictor,
    series: Sequence[Sequence[dict]],
    loader: Callable[[str], np.ndarray] = read_grey_frame,
    prefetch_depth: int = 1,
) -> Iterator[tuple[list[dict], list[dict]]]:
    """For each series (its per-frame dataset dicts), yield ``(inputs, outputs)`` in evaluator form.

    The whole series is predicted (clips at a frame's edges see its real neighbours, as in the
    mapper), and outputs are returned for the frames in ``series`` only. The next series is read
    (``loader``, in a background thread) and prepared for the model while one is predicted
    (:class:`~perforation_d2.data.prefetch.Prefetch`, up to ``prefetch_depth`` series ahead; 0:
    one after the other, the same results); a frame that cannot be read raises at its series.
    """

    def load(records: Sequence[dict]) -> PreparedSeries:
        return read_prepared_series(predictor, records, loader)

    with Prefetch(series, load, prefetch_depth) as loaded:
        for records, frames in loaded:
            first = records[0]
            instances = predictor(frames, first.get("series_frame_time_ms"), series_label(first))
            yield list(records), [{"instances": instances[record["frame_id"]]} for record in records]


def inference_on_cohort(
    model: nn.Module,
    dataset_name: str,
    evaluator: DatasetEvaluator | list[DatasetEvaluator] | None,
    frame_size: int,
    batch_size: int = 4,
    allow_tf32: bool = False,
    precision: str | None = None,
    clip_ablation: str = "none",
    clip_span_ms: float = 0.0,
) -> dict:
    """Like Detectron2's ``inference_on_dataset``, but series by series with cached features.

    Every registered frame of ``dataset_name`` gets its output; the evaluator's ``process`` is
    called once per series with that series' frame dicts and outputs. Series (not frames) are
    sharded across processes, so each series is predicted whole by one worker. ``allow_tf32``,
    ``precision``, ``clip_ablation`` and ``clip_span_ms`` are :class:`SeriesPredictor`'s.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    all_series = series_of_dataset(DatasetCatalog.get(dataset_name))
    my_series = all_series[comm.get_rank() :: comm.get_world_size()]
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, list):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()
    predictor = SeriesPredictor(
        model, frame_size=frame_size, batch_size=batch_size, allow_tf32=allow_tf32, precision=precision,
        clip_ablation=clip_ablation, clip_span_ms=clip_span_ms,
    )
    num_frames = sum(len(s) for s in my_series)
    logger.info(f"Start cached series inference on {len(my_series)} series ({num_frames} frames) of {dataset_name}")
    start_time = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        # closing: the loading thread stops even if the evaluator raises (docs of data.prefetch)
        for inputs, outputs in stack.enter_context(closing(iterate_series_predictions(predictor, my_series))):
            evaluator.process(inputs, outputs)
    elapsed = time.perf_counter() - start_time
    logger.info(
        f"Total cached series inference time: {datetime.timedelta(seconds=int(elapsed))} "
        f"({elapsed / max(1, num_frames):.6f} s / frame per device, on {comm.get_world_size()} devices; "
        f"backbone ran on {predictor.backbone_frames} frames; {predictor.fully_decoded_frames} frames needed "
        "Detectron2's full decoding)"
    )
    results = evaluator.evaluate()
    return {} if results is None else results


def cached_series_test(trainer_cls: type, cfg, model: nn.Module, evaluators=None) -> dict:
    """``DefaultTrainer.test`` with :func:`inference_on_cohort` instead of a per-clip data loader.

    ``trainer_cls`` provides ``build_evaluator(cfg, dataset_name)``. Returns, like Detectron2, an
    OrderedDict of results per test dataset, or the single dataset's results directly.
    """
    if isinstance(evaluators, DatasetEvaluator):
        evaluators = [evaluators]
    if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
        raise ValueError(f"{len(cfg.DATASETS.TEST)} test datasets but {len(evaluators)} evaluators")
    results: OrderedDict[str, dict] = OrderedDict()
    for index, dataset_name in enumerate(cfg.DATASETS.TEST):
        evaluator = evaluators[index] if evaluators is not None else trainer_cls.build_evaluator(cfg, dataset_name)
        results[dataset_name] = inference_on_cohort(
            model, dataset_name, evaluator, cfg.INPUT.FRAME_SIZE, precision=precision_from_cfg(cfg),
            clip_ablation=cfg.TEST.DSA.CLIP_ABLATION, clip_span_ms=cfg.MODEL.TEMPORAL.CLIP_SPAN_MS,
        )
        if comm.is_main_process():
            logger.info(f"Evaluation results for {dataset_name} in csv format:")
            print_csv_format(results[dataset_name])
    if len(results) == 1:
        return next(iter(results.values()))
    return results


@dataclass(frozen=True)
class PrecisionAgreement:
    """How series inference in ``precision`` compares with strict FP32 on the same series.

    A series agrees when its decision (series score >= ``threshold``) is the same and so is its
    answer to "where": the kept box of its best frame after series optimisation (both absent, or
    IoU >= ``min_iou``). Reported too: the largest series and frame score differences, the
    smallest key-box IoU and the largest coordinate difference of boxes kept in the same frame.
    """

    precision: str
    threshold: float
    num_series: int
    decisions_agree: int
    boxes_agree: int
    max_series_score_difference: float
    max_frame_score_difference: float
    min_key_box_iou: float
    max_box_difference_px: float
    min_iou: float

    @property
    def agrees(self) -> bool:
        return self.decisions_agree == self.num_series and self.boxes_agree == self.num_series


def compare_precision(
    model: nn.Module,
    frame_size: int,
    series: Sequence[np.ndarray],
    precision: str,
    threshold: float | None,
    batch_size: int = 4,
    series_optimization: bool = True,
    min_iou: float = 0.5,
) -> PrecisionAgreement:
    """Predict every series in FP32 and in ``precision`` and compare decisions, kept boxes and scores.

    ``threshold`` None: the median FP32 series score (decisions then split the series).
    """
    results = {}
    for mode in ("fp32", precision):
        predictor = SeriesPredictor(model, frame_size, batch_size=batch_size, precision=mode)
        results[mode] = [
            predict_one_series(predictor, frames, list(range(len(frames))), series_optimization) for frames in series
        ]
    if threshold is None:
        threshold = float(np.median([r.score for r in results["fp32"]]))
    decisions = boxes = 0
    series_diff = frame_diff = box_diff = 0.0
    key_iou = 1.0
    for reference, other in zip(results["fp32"], results[precision]):
        decisions += (reference.score >= threshold) == (other.score >= threshold)
        series_diff = max(series_diff, abs(reference.score - other.score))
        keys = [r.boxes_xyxy[r.frame_of_max] if r.frame_of_max is not None else None for r in (reference, other)]
        if keys[0] is None or keys[1] is None:
            boxes += keys[0] is None and keys[1] is None
        else:
            # box_iou takes x, y, w, h rows
            iou = float(box_iou(*(np.array([[x0, y0, x1 - x0, y1 - y0]]) for x0, y0, x1, y1 in keys))[0])
            key_iou = min(key_iou, iou)
            boxes += iou >= min_iou
        box_diff = max([box_diff, *(
            float(np.max(np.abs(np.subtract(a, b))))
            for a, b in zip(reference.boxes_xyxy, other.boxes_xyxy) if a is not None and b is not None
        )])
        raw_a = {r["image_id"]: r["score"] for r in reference.raw}
        raw_b = {r["image_id"]: r["score"] for r in other.raw}
        frame_diff = max([frame_diff, *(abs(raw_a[k] - raw_b[k]) for k in raw_a.keys() & raw_b.keys())])
    return PrecisionAgreement(
        precision=precision, threshold=float(threshold), num_series=len(series), decisions_agree=int(decisions),
        boxes_agree=int(boxes), max_series_score_difference=series_diff, max_frame_score_difference=frame_diff,
        min_key_box_iou=key_iou, max_box_difference_px=box_diff, min_iou=min_iou,
    )
