"""The benchmark's "inference" section: cached series inference, measured as ratios in one run.

For each temporal model at T = 5 (the four feature-fusion modules and input fusion), one series
is predicted by the same (random, seeded) model twice per round: with
:class:`~perforation_d2.modeling.series_inference.SeriesPredictor` (backbone once per frame) and
with :func:`~perforation_d2.modeling.series_inference.naive_predict_series` (one clip per frame
through the model's own ``forward``: the backbone runs T times per frame). Rounds alternate the
paths (:func:`~.common.time_interleaved`), so that they see the same machine load, and the median
of the per-round ratios is reported, against issue 14's CPU targets:

* cached vs naive: time(naive) / time(cached), target >= 4.5x for TemporalConv and
  TemporalAttention and >= 3.5x for BiConvGRU and BiConvLSTM;
* per-frame cost: time(cached, temporal model) / time(cached, single-frame RetinaNet, timed in
  the same rounds), target <= 1.05x for TemporalConv and TemporalAttention and <= 1.3x for the
  recurrent modules;
* input fusion (``MODEL.TEMPORAL.FUSION "input"``, the T grey frames as the backbone's input
  channels): its per-frame cost, and cached vs naive for information only (no target): it has
  nothing to cache, both paths run the backbone once per clip; what differs is the naive path's
  normalisation of every clip's T frames and its Detectron2 decoding with NMS.

Sizes: by default the quick configs (ResNet18-FPN, 64 channels) at 128 px on a 20-frame series;
``--quick`` 64 px and 8 frames; ``--full-size`` (meant for ``--device cuda``) the paper's
ResNet50-FPN at 640 px on a 30-frame 1024 px series, also reporting frames per second of cached
series inference and the peak GPU memory of a 60-frame 1024 px series. CUDA timings synchronise
before reading the clock and follow one warm-up run of each path; CPU timings use one thread.
The targets above are for the quick models on CPU; ``--full-size`` on CUDA carries the issue's
GPU target, cached vs naive >= 4x for every feature-fusion module, and no per-frame target.

What bounds the speed-up: both paths run the temporal module, the head and its top-1 decoding
once per centre frame, and preprocess every frame; the cache saves T - 1 of the T backbone runs
per frame only, so the ratio approaches T only where the backbone dominates a frame's cost.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from ..config import CONFIG_DIR, add_perforation_config
from ..modeling.series_inference import SeriesPredictor, naive_predict_series
from .common import BenchRow, synthetic_series, time_interleaved, without_grad

# The feature-fusion temporal modules (MODEL.TEMPORAL.MODULE), each with issue 14's CPU targets.
MODULES = ("TemporalConv", "TemporalAttention", "BiConvGRU", "BiConvLSTM")
SPEEDUP_TARGETS = {"TemporalConv": 4.5, "TemporalAttention": 4.5, "BiConvGRU": 3.5, "BiConvLSTM": 3.5}
PER_FRAME_TARGETS = {"TemporalConv": 1.05, "TemporalAttention": 1.05, "BiConvGRU": 1.3, "BiConvLSTM": 1.3}
GPU_SPEEDUP_TARGET = 4.0  # --full-size on CUDA, every feature-fusion module
# Early fusion (MODEL.TEMPORAL.FUSION "input"): its own row family, per-frame cost reported without
# a target (issue 14 states none), cached vs naive informative only (nothing to cache).
INPUT_FUSION = "input"
PAPER_FPS = 5.0
_LEAVES = {"TemporalConv": "tconv", "TemporalAttention": "tattn", "BiConvGRU": "bigru", "BiConvLSTM": "bilstm",
           INPUT_FUSION: "input"}


def label(module: str) -> str:
    """The rows' name of a temporal model: ``"TemporalConv T=5"``, ``"input fusion T=5"``."""
    return "input fusion T=5" if module == INPUT_FUSION else f"{module} T=5"


def leaf_config(leaf, frame_size: int, device: str, opts: tuple = ()):
    """The config of the YAML ``leaf`` (a path) at ``frame_size`` on ``device``, then ``opts``."""
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(leaf))
    cfg.merge_from_list(["INPUT.FRAME_SIZE", frame_size, "MODEL.DEVICE", device, *opts])
    return cfg


def _config(full_size: bool, module: str | None, frame_size: int, device: str):
    """The model config of ``module`` (a MODULES name, INPUT_FUSION, or None: single-frame RetinaNet)."""
    opts: tuple = ()
    if full_size:
        if module == INPUT_FUSION:
            # No full-size input-fusion leaf: the T=5 leaf with the fusion switched.
            leaf = "retinanet_R50_FPN_tconv_T5.yaml"
            opts = ("MODEL.TEMPORAL.FUSION", "input")
        else:
            leaf = "retinanet_R50_FPN.yaml" if module is None else f"retinanet_R50_FPN_{_LEAVES[module]}_T5.yaml"
        return leaf_config(CONFIG_DIR / leaf, frame_size, device, opts)
    leaf = "retinanet.yaml" if module is None else f"retinanet_{_LEAVES[module]}_T5.yaml"
    return leaf_config(CONFIG_DIR / "quick" / leaf, frame_size, device)


def _targets(module: str, full_size: bool, cuda: bool) -> tuple[float | None, float | None]:
    """(cached vs naive, per-frame cost) targets of ``module``'s rows; None where the issue states none."""
    if cuda:
        # The GPU target is for the full-size models only, and for the speed-up only.
        return (GPU_SPEEDUP_TARGET if full_size and module in MODULES else None), None
    if full_size:
        return None, None
    return SPEEDUP_TARGETS.get(module), PER_FRAME_TARGETS.get(module)


def _model(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg).eval()


def series_sizes(args: argparse.Namespace) -> tuple[int, int, int, int]:
    """(model frame size, series frames, series frame size, rounds) for ``--full-size``/``--quick``/default."""
    if getattr(args, "full_size", False):
        return 640, 30, 1024, 3
    if getattr(args, "quick", False):
        return 64, 8, 96, 1
    return 128, 20, 256, 3


def _predict_works(
    model: torch.nn.Module, single: SeriesPredictor, series: np.ndarray, frame_size: int, batch: int
) -> dict[str, Callable[[], object]]:
    """Cached, naive and single-frame cached prediction of ``series``, without autograd."""
    cached = SeriesPredictor(model, frame_size, batch)
    return {
        "cached": without_grad(lambda: cached(series)),
        "naive": without_grad(lambda: naive_predict_series(model, series, frame_size, batch)),
        "single": without_grad(lambda: single(series)),
    }


def benchmark_inference(args: argparse.Namespace) -> list[BenchRow]:
    device = getattr(args, "device", "cpu") or "cpu"
    if device.startswith("cuda"):
        return _benchmark(args, device)
    # One CPU thread: on a small shared machine, multi-threaded timings of these tiny models
    # swing with the neighbours' load far more than the work being compared does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _benchmark(args, device)
    finally:
        torch.set_num_threads(threads)


def _benchmark(args: argparse.Namespace, device: str) -> list[BenchRow]:
    full_size = bool(getattr(args, "full_size", False))
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA GPU is available to PyTorch")
    frame_size, num_frames, source_size, rounds = series_sizes(args)
    batch = 4
    backbone = "ResNet50-FPN" if full_size else "quick ResNet18-FPN"
    where = device if device.startswith("cuda") else "cpu, 1 thread"
    how = (f"{backbone} at {frame_size} px, one {num_frames}-frame {source_size} px series, "
           f"{batch} centre frames per batch, median of {rounds} alternating rounds, {where}")
    series = synthetic_series(num_frames, source_size)

    single = SeriesPredictor(_model(_config(full_size, None, frame_size, device)), frame_size, batch)
    cuda = device.startswith("cuda")
    rows: list[BenchRow] = []
    fps_rows: list[BenchRow] = []
    for module in (*MODULES, INPUT_FUSION):
        model = _model(_config(full_size, module, frame_size, device))
        works = _predict_works(model, single, series, frame_size, batch)
        time_interleaved(works, 1, device)  # warm-up
        times = time_interleaved(works, rounds, device)
        speedup, per_frame = times.ratio("naive", "cached"), times.ratio("cached", "single")
        speedup_target, per_frame_target = _targets(module, full_size, cuda)
        nothing_cached = ("no target: nothing to cache, both paths run the backbone once per clip (the naive "
                          "path also normalises every clip's frames and decodes with NMS); ") if module == INPUT_FUSION else ""
        rows.append(BenchRow(
            "inference", f"cached vs naive series inference, {label(module)}", speedup,
            target=f">= {speedup_target:g}x" if speedup_target else "",
            met=(speedup >= speedup_target) if speedup_target else None,
            note=f"time(naive per-clip) / time(cached); {nothing_cached}{how}",
        ))
        rows.append(BenchRow(
            "inference", f"per-frame cost vs single-frame RetinaNet, {label(module)}", per_frame,
            target=f"<= {per_frame_target:g}x" if per_frame_target else "",
            met=(per_frame <= per_frame_target) if per_frame_target else None,
            note=f"time(cached, T=5) / time(cached, T=1 RetinaNet); {how}",
        ))
        if full_size:
            fps = num_frames / times.seconds("cached")
            fps_rows.append(BenchRow(
                "inference", f"series inference frames/s, {label(module)}", fps, unit="frames/s",
                target=f"> {PAPER_FPS:g} frames/s", met=fps > PAPER_FPS,
                note=f"cached; paper: > 5 frames/s on an 11 GB GPU; {how}",
            ))
    if full_size:
        single_only = {"single": works["single"]}  # the same single-frame predictor in every module's works
        fps_rows.insert(0, BenchRow(
            "inference", "series inference frames/s, single-frame RetinaNet",
            num_frames / time_interleaved(single_only, rounds, device).seconds("single"), unit="frames/s", note=how,
        ))
        rows += fps_rows
        if device.startswith("cuda"):
            rows.append(_peak_memory_row(full_size, frame_size, device, batch))
    return rows


def _peak_memory_row(full_size: bool, frame_size: int, device: str, batch: int) -> BenchRow:
    """Peak GPU memory of cached inference on a 60-frame 1024 px series (TemporalConv, T = 5)."""
    model = _model(_config(full_size, "TemporalConv", frame_size, device))
    predictor = SeriesPredictor(model, frame_size, batch)
    series = synthetic_series(60, 1024, seed=1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        predictor(series)
    peak = torch.cuda.max_memory_allocated() / 2**20
    return BenchRow(
        "inference", "peak GPU memory, cached inference of a 60-frame 1024 px series", peak, unit="MiB",
        note=f"TemporalConv T=5 at {frame_size} px; feature window held at most "
             f"{predictor.peak_window_frames} frames (of 60)",
    )
