"""The benchmark's "training" section: step time and peak memory against the clip length T.

RetinaNet + temporal convolution is trained for a few steps at T = 1, 3, 5 and 9, each with and
without activation checkpointing of the per-frame backbone (``MODEL.TEMPORAL.CHECKPOINT_BACKBONE``),
on synthetic clips of ``SOLVER.IMS_PER_BATCH`` = 2. Every figure is a ratio to T = 1 without
checkpointing, measured in the same run. What "peak memory" is depends on the device:

- CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, optimizer
  state and activations: what the GPU must hold).
- CPU: the peak resident-set growth during the timed steps, read from Linux's ``VmHWM`` after
  resetting it (``/proc/self/clear_refs``) and returning freed heap to the system
  (``malloc_trim``); i.e. what a step allocates on top of the model (activations, gradients). Where the kernel does not
  allow the reset, memory rows are left out rather than guessed.

Sizes: ``--quick`` 64 px, ``--full-size`` (CUDA only) the paper's 640 px ResNet50-FPN, otherwise
the quick ResNet18-FPN at 128 px.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import time
from pathlib import Path

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ..commands.benchmark import BenchRow
from ..config import CONFIG_DIR, add_perforation_config
from ..errors import DSAInputError

__all__ = ["benchmark_training"]

CONFIGS = CONFIG_DIR
CLIP_LENGTHS = (1, 3, 5, 9)


def _config(args: argparse.Namespace, num_frames: int, checkpointing: bool) -> CfgNode:
    cfg = get_cfg()
    add_perforation_config(cfg)
    if args.full_size:
        cfg.merge_from_file(str(CONFIGS / "retinanet_R50_FPN_tconv_T5.yaml"))
    else:
        cfg.merge_from_file(str(CONFIGS / "quick" / "retinanet_tconv_T5.yaml"))
        cfg.INPUT.FRAME_SIZE = 64 if args.quick else 128
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = checkpointing
    return cfg


def _clips(cfg: CfgNode) -> list[dict]:
    size = cfg.INPUT.FRAME_SIZE
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(cfg.SOLVER.IMS_PER_BATCH):
        side = size / 10
        x0 = size * (0.2 + 0.3 * i)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor([[x0, x0, x0 + side, x0 + side * 1.2]]))
        instances.gt_classes = torch.zeros(1, dtype=torch.int64)
        clip = torch.randint(0, 256, (cfg.MODEL.TEMPORAL.NUM_FRAMES, 3, size, size), dtype=torch.uint8, generator=gen)
        inputs.append({"image": clip, "instances": instances, "height": size, "width": size})
    return inputs


def _proc_status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE).group(1)) * 1024


def _reset_cpu_peak() -> int | None:
    """Return freed heap to the system and reset VmHWM; the current RSS, or None if unsupported."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmRSS")
    except (OSError, AttributeError):
        return None


def _measure(cfg: CfgNode, timed_steps: int) -> tuple[float, float | None]:
    """(median step seconds, peak bytes or None) of SGD training steps of the model of ``cfg``."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    inputs = _clips(cfg)
    cuda = cfg.MODEL.DEVICE.startswith("cuda")

    def step() -> None:
        losses = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    with EventStorage(0):
        step()  # warm-up: gradients and momentum buffers exist from here on
        if cuda:
            gc.collect()  # the previous setting's model and optimizer
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            rss_before = _reset_cpu_peak()
        times = []
        for _ in range(timed_steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        if cuda:
            peak = float(torch.cuda.max_memory_allocated())
        else:
            peak = None if rss_before is None else float(_proc_status_bytes("VmHWM") - rss_before)
    return statistics.median(times), peak


def benchmark_training(args: argparse.Namespace) -> list[BenchRow]:
    """Training step time and peak memory for T = 1, 3, 5, 9, with and without checkpointing."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DSAInputError("benchmark: --device cuda was asked for but torch sees no CUDA device.")
    if args.full_size and not args.device.startswith("cuda"):
        raise DSAInputError(
            "benchmark: --full-size trains the 640 px ResNet50-FPN at T = 9 and needs --device cuda."
        )
    timed_steps = 1 if args.quick else (5 if args.full_size else 3)
    results: dict[tuple[int, bool], tuple[float, float | None]] = {}
    for num_frames in CLIP_LENGTHS:
        for checkpointing in (False, True):
            cfg = _config(args, num_frames, checkpointing)
            results[num_frames, checkpointing] = _measure(cfg, timed_steps)

    base_time, base_peak = results[1, False]
    cfg = _config(args, 1, False)
    model_text = (
        f"RetinaNet+TemporalConv R{cfg.MODEL.RESNETS.DEPTH}-FPN{cfg.MODEL.FPN.OUT_CHANNELS}, "
        f"{cfg.SOLVER.IMS_PER_BATCH} clips of {cfg.INPUT.FRAME_SIZE} px, {args.device}"
    )
    memory_text = (
        "torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
        else "peak RSS growth during the timed steps (VmHWM reset)"
    )
    rows = [
        BenchRow("training", "step time, T=1", base_time, "s",
                 note=f"median of {timed_steps} SGD step(s) after a warm-up; {model_text}"),
    ]
    if base_peak is not None:
        rows.append(BenchRow("training", "peak memory, T=1", base_peak / 2**20, "MB", note=memory_text))
    for (num_frames, checkpointing), (step_time, peak) in results.items():
        if (num_frames, checkpointing) == (1, False):
            continue
        label = f"T={num_frames}" + (" checkpointed" if checkpointing else "")
        rows.append(BenchRow("training", f"step time, {label} / T=1", step_time / base_time,
                             note="checkpointing recomputes the per-frame backbone in backward"
                             if checkpointing else ""))
        if peak is not None and base_peak is not None:
            rows.append(BenchRow("training", f"peak memory, {label} / T=1", peak / base_peak))
    rows.append(BenchRow("training", "step time, T=9 checkpointed / T=9", results[9, True][0] / results[9, False][0],
                         note="the price of checkpointing"))
    peak_9_ckpt, peak_5 = results[9, True][1], results[5, False][1]
    if peak_9_ckpt is not None and peak_5 is not None:
        ratio = peak_9_ckpt / peak_5
        rows.append(BenchRow(
            "training", "peak memory, T=9 checkpointed / T=5", ratio, target="<= 1x", met=ratio <= 1.0,
            note=f"checkpoint segments of {cfg.MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES} frames; {memory_text}",
        ))
    return rows
