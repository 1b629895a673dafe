"""Benchmark rows of issue 14: top-1 decoding, precision modes and onnxruntime, as ratios in one run.

Same models (heads drawn wider, see :func:`_spread_head`), series and timer as the "inference"
section (quick configs at 128 px on a 20-frame series by default, ``--quick`` 64 px and 8 frames;
CPU with one thread), rounds alternating the works (:func:`~.common.time_interleaved`), medians of
per-round ratios:

* new vs old decoding: time(cached, Detectron2's decoding + NMS + top-1) / time(cached, top-1
  decoding), same detections by construction (tests/modeling/test_top1.py);
* precision: time(fp32) / time(bf16) on the device, with the agreement check of
  :func:`~perforation_d2.evaluation.inference.compare_precision` (decisions and key boxes at a
  threshold, largest score difference) on the same series;
* onnxruntime vs PyTorch (CPU): time(onnxruntime) / time(PyTorch) of the cached series loop
  with the exported graphs (target <= 1.0x), with the largest box / score difference;
* on CUDA (or with ``args.precision_modes``): frames/s of every temporal module in every precision
  mode the device runs, peak GPU memory, agreement with fp32 (:func:`precision_mode_rows`);
* loading overlapped with prediction: time(each series read, then predicted) / time(the next series
  read in a background thread meanwhile, :mod:`~perforation_d2.data.prefetch`), evaluation's series
  loop over a registered cohort of PNG series at the DSA frame size (:func:`prefetch_rows`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..config import CONFIG_DIR
from ..modeling.series_inference import SeriesPredictor
from .common import BenchRow, synthetic_series, time_interleaved, write_bench_cohort
from .inference import _config, _model, leaf_config

ONNX_TARGET = 1.0
# The R-CNN heads of the decoding rows (top-1 decoding covers every head: tests/modeling/test_top1.py).
RCNN_LEAVES = {"faster_rcnn.yaml": "Faster R-CNN", "cascade_rcnn.yaml": "Cascade R-CNN"}


def _sizes(args: argparse.Namespace) -> tuple[int, int, int, int]:
    if getattr(args, "quick", False):
        return 64, 8, 96, 1
    return 128, 20, 256, 3


def _prefetch_sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """(series, frames per series, frame size in px) of the cohort that :func:`prefetch_rows` reads."""
    if getattr(args, "quick", False):
        return 2, 4, 96
    return 4, 20, 1024  # DSA frames: 1024 px


def _spread_head(model: torch.nn.Module) -> torch.nn.Module:
    """Head weights drawn N(0, 0.05) (seeded), classification bias kept at the prior: with the
    initial N(0, 0.01) no anchor of a random model passes the 0.05 test threshold, and neither
    the old decoding (NMS) nor the agreement checks would have anything to work on."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            if name.endswith("weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _no_grad(work):
    def run():
        with torch.no_grad():
            return work()

    return run


def decoding_rows(model, series: np.ndarray, frame_size: int, rounds: int, device: str, label: str,
                  how: str) -> list[BenchRow]:
    """New (top-1) vs old (Detectron2 + NMS + top-1) decoding inside cached series inference."""
    works = {
        decoding: _no_grad(lambda p=SeriesPredictor(model, frame_size, 4, decoding=decoding): p(series))
        for decoding in ("detectron2", "top1")
    }
    time_interleaved(works, 1, device)
    times = time_interleaved(works, rounds, device)
    saved_ms = (times.seconds("detectron2") - times.seconds("top1")) / len(series) * 1e3
    return [BenchRow(
        "inference", f"Detectron2 decoding + NMS vs top-1 decoding, {label}", times.ratio("detectron2", "top1"),
        note=f"time(cached, old decoding) / time(cached, top-1 decoding); {saved_ms:.2f} ms/frame saved; {how}",
    )]


def precision_rows(model, series: np.ndarray, frame_size: int, rounds: int, device: str, label: str,
                   how: str, precision: str = "bf16", threshold: float | None = None) -> list[BenchRow]:
    """Speed of ``precision`` against fp32 and whether it agrees (decisions, key boxes)."""
    from ..evaluation.inference import compare_precision

    agreement = compare_precision(model, frame_size, [series[: len(series) // 2], series[len(series) // 2 :]],
                                  precision, threshold)
    works = {mode: _no_grad(lambda p=SeriesPredictor(model, frame_size, 4, precision=mode): p(series))
             for mode in ("fp32", precision)}
    time_interleaved(works, 1, device)
    times = time_interleaved(works, rounds, device)
    verdict = "agrees" if agreement.agrees else "DISAGREES"
    return [BenchRow(
        "inference", f"{precision} vs fp32 speed, {label}", times.ratio("fp32", precision),
        note=(f"time(fp32) / time({precision}); {verdict} with fp32 at threshold {agreement.threshold:.4g} "
              "(median fp32 series score) on 2 series "
              f"(decisions {agreement.decisions_agree}/2, key boxes {agreement.boxes_agree}/2), largest score "
              f"difference {agreement.max_frame_score_difference:.1e} (frame) / "
              f"{agreement.max_series_score_difference:.1e} (series); {how}"),
    )]


def onnx_rows(cfg, model, series: np.ndarray, frame_size: int, rounds: int, label: str, how: str) -> list[BenchRow]:
    """onnxruntime vs PyTorch series inference on CPU, through a fresh export of ``model``."""
    from ..engine import SafeDetectionCheckpointer
    from ..export import OnnxSeriesPredictor, export_model

    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "config.yaml"
        config.write_text(cfg.dump())
        SafeDetectionCheckpointer(model, save_dir=folder).save("model")
        export_model(str(config), str(Path(folder) / "model.pth"), str(Path(folder) / "onnx"))
        onnx = OnnxSeriesPredictor(model, Path(folder) / "onnx", frame_size, 4, threads=torch.get_num_threads())
        pytorch = SeriesPredictor(model, frame_size, 4)
        works = {"onnxruntime": _no_grad(lambda: onnx(series)), "pytorch": _no_grad(lambda: pytorch(series))}
        outputs = {name: work() for name, work in works.items()}
        times = time_interleaved(works, rounds, "cpu")
    boxes = scores = 0.0
    for a, b in zip(outputs["onnxruntime"], outputs["pytorch"]):
        if len(a) and len(b):
            boxes = max(boxes, float((a.pred_boxes.tensor - b.pred_boxes.tensor).abs().max()))
            scores = max(scores, float((a.scores - b.scores).abs().max()))
    same = all(len(a) == len(b) for a, b in zip(outputs["onnxruntime"], outputs["pytorch"]))
    ratio = times.ratio("onnxruntime", "pytorch")
    return [BenchRow(
        "inference", f"onnxruntime vs PyTorch series inference (CPU), {label}", ratio,
        target=f"<= {ONNX_TARGET:g}x", met=ratio <= ONNX_TARGET,
        note=(f"time(onnxruntime) / time(PyTorch), both cached + top-1; {'same' if same else 'DIFFERENT'} frames "
              f"with a detection, largest difference {boxes:.1e} px / score {scores:.1e}; {how}"),
    )]


def prefetch_rows(model, frame_size: int, num_series: int, num_frames: int, source_size: int, rounds: int,
                  device: str, label: str, how: str) -> list[BenchRow]:
    """Evaluation's series loop (:func:`~perforation_d2.evaluation.inference.iterate_series_predictions`)
    over a registered cohort of PNG series: each series read (decoded, resized for the model), then
    predicted, against the next series read in a background thread while one is predicted."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from ..data.register import register_dsa_cohort
    from ..evaluation.inference import iterate_series_predictions, read_prepared_series, series_of_dataset

    predictor = SeriesPredictor(model, frame_size, 4)
    name = f"benchmark_prefetch_{os.getpid()}"
    with tempfile.TemporaryDirectory() as folder:
        register_dsa_cohort(name, write_bench_cohort(Path(folder), num_series, num_frames, source_size))
        try:
            series = series_of_dataset(DatasetCatalog.get(name))
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        def loop(depth: int):
            return _no_grad(lambda: sum(1 for _ in iterate_series_predictions(predictor, series, prefetch_depth=depth)))

        works = {"sequential": loop(0), "overlapped": loop(1),
                 "reading": lambda: [read_prepared_series(predictor, records) for records in series]}
        time_interleaved(works, 1, device)
        times = time_interleaved(works, rounds, device)
    return [BenchRow(
        "inference", f"series read in a background thread vs in turn, {label}", times.ratio("sequential", "overlapped"),
        note=(f"time(each series read, then predicted) / time(the next series read while one is predicted), "
              f"evaluation's series loop; reading (PNG decoding + resize) is {times.ratio('reading', 'sequential'):.0%} "
              f"of the sequential time; {num_series} series of {num_frames} PNG frames of {source_size} px in a "
              f"registered cohort; {how}"),
    )]


def precision_mode_rows(args: argparse.Namespace, device: str) -> list[BenchRow]:
    """Frames/s of cached series inference for every temporal module in every precision mode the
    device runs, with peak GPU memory on CUDA, and whether the mode agrees with fp32 (key boxes and
    decisions at the median fp32 series score). ``--full-size``: ResNet50-FPN at 640 px on a
    30-frame 1024 px series; else the quick models."""
    from ..errors import DSAInputError
    from ..evaluation.inference import compare_precision
    from ..modeling.precision import PRECISIONS, check_precision
    from .inference import MODULES

    full_size = bool(getattr(args, "full_size", False))
    frame_size, num_frames, source_size, rounds = (640, 30, 1024, 3) if full_size else _sizes(args)
    series = synthetic_series(num_frames, source_size)
    cuda = device.startswith("cuda")
    rows = []
    for module in MODULES:
        model = _spread_head(_model(_config(full_size, module, frame_size, device)))
        for precision in PRECISIONS:
            try:
                check_precision(precision, device)
            except DSAInputError:
                continue
            if not cuda and precision in ("tf32", "fp16"):
                continue  # on CPU tf32 computes fp32, and fp16 has no fast CPU kernels
            predictor = SeriesPredictor(model, frame_size, 4, precision=precision)
            work = {"run": _no_grad(lambda p=predictor: p(series))}
            time_interleaved(work, 1, device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = time_interleaved(work, rounds, device).seconds("run")
            memory = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if cuda else ""
            agreement = "" if precision == "fp32" else (
                "; agrees with fp32" if compare_precision(
                    model, frame_size, [series[: num_frames // 2], series[num_frames // 2 :]], precision, None
                ).agrees else "; DISAGREES with fp32 (key box or decision)")
            rows.append(BenchRow(
                "inference", f"series inference frames/s, {module} T=5, {precision}", num_frames / seconds,
                unit="frames/s",
                note=f"cached + top-1, {frame_size} px, {num_frames}-frame {source_size} px series, {device}"
                     f"{memory}{agreement}",
            ))
    return rows


def benchmark_deployment(args: argparse.Namespace) -> list[BenchRow]:
    """All rows above for TemporalConv T=5 (and the decoding row for single-frame RetinaNet too)."""
    device = getattr(args, "device", "cpu") or "cpu"
    threads = torch.get_num_threads()
    if not device.startswith("cuda"):
        torch.set_num_threads(1)
    try:
        frame_size, num_frames, source_size, rounds = _sizes(args)
        where = device if device.startswith("cuda") else "cpu, 1 thread"
        how = (f"quick ResNet18-FPN at {frame_size} px (heads N(0, 0.05)), one {num_frames}-frame "
               f"{source_size} px series, median of {rounds} alternating rounds, {where}")
        series = synthetic_series(num_frames, source_size)
        rows: list[BenchRow] = []
        single = _spread_head(_model(_config(False, None, frame_size, device)))
        rows += decoding_rows(single, series, frame_size, rounds, device, "single-frame RetinaNet", how)
        for leaf, name in RCNN_LEAVES.items():
            # Random R-CNN heads already score every proposal near 0.5, above the test threshold:
            # no spreading needed for the old decoding (its NMS) to have work.
            rows += decoding_rows(_model(leaf_config(CONFIG_DIR / "quick" / leaf, frame_size, device)), series, frame_size, rounds,
                                  device, f"single-frame {name}", how.replace(" (heads N(0, 0.05))", ""))
        cfg = _config(False, "TemporalConv", frame_size, device)
        model = _spread_head(_model(cfg))
        label = "TemporalConv T=5"
        rows += decoding_rows(model, series, frame_size, rounds, device, label, how)
        rows += precision_rows(model, series, frame_size, rounds, device, label, how)
        rows += prefetch_rows(model, frame_size, *_prefetch_sizes(args), rounds, device, label,
                              f"quick ResNet18-FPN at {frame_size} px (heads N(0, 0.05)), median of {rounds} "
                              f"alternating rounds, {where}")
        if not device.startswith("cuda"):
            rows += onnx_rows(cfg, model, series, frame_size, rounds, label, how)
        if device.startswith("cuda") or getattr(args, "precision_modes", False):
            rows += precision_mode_rows(args, device)
        return rows
    finally:
        torch.set_num_threads(threads)
