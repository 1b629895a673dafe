"""The benchmark's "training" section: step time and peak memory against the clip length T.

RetinaNet + temporal convolution is trained for a few steps at T = 1, 3, 5 and 9, each with and
without activation checkpointing of the per-frame backbone (``MODEL.TEMPORAL.CHECKPOINT_BACKBONE``),
on synthetic clips of ``SOLVER.IMS_PER_BATCH`` = 2. Every figure is a ratio to T = 1 without
checkpointing, measured in the same run: the eight settings' models are built and warmed up one
after the other (each step's peak memory is read then), and their steps are then timed in
interleaved rounds (:func:`~.common.time_interleaved`). What "peak memory" is depends on the device:

- CUDA: ``torch.cuda.max_memory_allocated`` during a step after the warm-up, counted from what
  was allocated before the model was built (weights, gradients, optimizer state and
  activations: what the GPU must hold for that setting alone).
- CPU: the peak resident-set growth during a step after the warm-up, read from Linux's ``VmHWM``
  after resetting it (``/proc/self/clear_refs``) and returning freed heap to the system
  (``malloc_trim``); i.e. what a step allocates on top of the model (activations, gradients).
  Where the kernel does not allow the reset, memory rows are left out rather than guessed.

Sizes: ``--quick`` 64 px, ``--full-size`` (CUDA only) the paper's 640 px ResNet50-FPN, otherwise
the quick ResNet18-FPN at 128 px.
"""

from __future__ import annotations

import argparse
import gc
from collections.abc import Callable

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ..config import CONFIG_DIR, add_perforation_config
from ..errors import DSAInputError
from .common import BenchRow, peak_rss_bytes, reset_peak_rss, synthetic_series, time_interleaved

__all__ = ["benchmark_training"]

CLIP_LENGTHS = (1, 3, 5, 9)


def _config(args: argparse.Namespace, num_frames: int, checkpointing: bool) -> CfgNode:
    cfg = get_cfg()
    add_perforation_config(cfg)
    if args.full_size:
        cfg.merge_from_file(str(CONFIG_DIR / "retinanet_R50_FPN_tconv_T5.yaml"))
    else:
        cfg.merge_from_file(str(CONFIG_DIR / "quick" / "retinanet_tconv_T5.yaml"))
        cfg.INPUT.FRAME_SIZE = 64 if args.quick else 128
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.TEMPORAL.NUM_FRAMES = num_frames
    cfg.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = checkpointing
    return cfg


def _clips(cfg: CfgNode) -> list[dict]:
    """``SOLVER.IMS_PER_BATCH`` training inputs: a synthetic DSA clip and one box each."""
    size, num_frames = cfg.INPUT.FRAME_SIZE, cfg.MODEL.TEMPORAL.NUM_FRAMES
    inputs = []
    for i in range(cfg.SOLVER.IMS_PER_BATCH):
        side = size / 10
        x0 = size * (0.2 + 0.3 * i)
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.tensor([[x0, x0, x0 + side, x0 + side * 1.2]]))
        instances.gt_classes = torch.zeros(1, dtype=torch.int64)
        frames = torch.from_numpy(synthetic_series(num_frames, size, seed=i))
        clip = frames[:, None].expand(-1, 3, -1, -1).contiguous()
        inputs.append({"image": clip, "instances": instances, "height": size, "width": size})
    return inputs


def _training_step(cfg: CfgNode) -> Callable[[], None]:
    """One SGD step of a fresh (seeded) model of ``cfg`` on :func:`_clips`, as a callable."""
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    inputs = _clips(cfg)

    def step() -> None:
        losses = model(inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def _step_with_peak(cfg: CfgNode) -> tuple[Callable[[], None], float | None]:
    """A warmed-up training step of ``cfg`` and the peak bytes of one step (None where unknown).

    Runs while the earlier settings' models are alive (they are timed together afterwards), so
    the CUDA peak is counted from what was allocated before this model was built: the model's
    weights, gradients, optimizer state and activations, as if it were alone.
    """
    cuda = cfg.MODEL.DEVICE.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.synchronize()
        allocated_before = torch.cuda.memory_allocated()
    step = _training_step(cfg)
    step()  # warm-up: gradients and momentum buffers exist from here on
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        rss_before = reset_peak_rss()
    step()
    if cuda:
        torch.cuda.synchronize()
        return step, float(torch.cuda.max_memory_allocated() - allocated_before)
    return step, None if rss_before is None else float(peak_rss_bytes() - rss_before)


def benchmark_training(args: argparse.Namespace) -> list[BenchRow]:
    """Training step time and peak memory for T = 1, 3, 5, 9, with and without checkpointing."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DSAInputError("benchmark: --device cuda was asked for but torch sees no CUDA device.")
    if args.full_size and not args.device.startswith("cuda"):
        raise DSAInputError(
            "benchmark: --full-size trains the 640 px ResNet50-FPN at T = 9 and needs --device cuda."
        )
    timed_steps = 1 if args.quick else (5 if args.full_size else 3)
    steps: dict[tuple[int, bool], Callable[[], None]] = {}
    peaks: dict[tuple[int, bool], float | None] = {}
    with EventStorage(0):
        for num_frames in CLIP_LENGTHS:
            for checkpointing in (False, True):
                key = (num_frames, checkpointing)
                steps[key], peaks[key] = _step_with_peak(_config(args, num_frames, checkpointing))
        times = time_interleaved(steps, timed_steps, args.device)
    base = (1, False)
    base_peak = peaks[base]
    cfg = _config(args, 1, False)
    model_text = (
        f"RetinaNet+TemporalConv R{cfg.MODEL.RESNETS.DEPTH}-FPN{cfg.MODEL.FPN.OUT_CHANNELS}, "
        f"{cfg.SOLVER.IMS_PER_BATCH} clips of {cfg.INPUT.FRAME_SIZE} px, {args.device}"
    )
    memory_text = (
        "torch.cuda.max_memory_allocated" if args.device.startswith("cuda")
        else "peak RSS growth during a step after the warm-up (VmHWM reset)"
    )
    rows = [
        BenchRow("training", "step time, T=1", times.seconds(base), "s",
                 note=f"median of {timed_steps} SGD step(s) after a warm-up, in rounds interleaving "
                 f"the {len(steps)} settings; {model_text}"),
    ]
    if base_peak is not None:
        rows.append(BenchRow("training", "peak memory, T=1", base_peak / 2**20, "MB", note=memory_text))
    for key, peak in peaks.items():
        if key == base:
            continue
        num_frames, checkpointing = key
        label = f"T={num_frames}" + (" checkpointed" if checkpointing else "")
        rows.append(BenchRow("training", f"step time, {label} / T=1", times.ratio(key, base),
                             note="checkpointing recomputes the per-frame backbone in backward"
                             if checkpointing else ""))
        if peak is not None and base_peak is not None:
            rows.append(BenchRow("training", f"peak memory, {label} / T=1", peak / base_peak))
    rows.append(BenchRow("training", "step time, T=9 checkpointed / T=9", times.ratio((9, True), (9, False)),
                         note="the price of checkpointing"))
    peak_9_ckpt, peak_5 = peaks[9, True], peaks[5, False]
    if peak_9_ckpt is not None and peak_5 is not None:
        ratio = peak_9_ckpt / peak_5
        rows.append(BenchRow(
            "training", "peak memory, T=9 checkpointed / T=5", ratio, target="<= 1x", met=ratio <= 1.0,
            note=f"checkpoint segments of {cfg.MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES} frames; {memory_text}",
        ))
    return rows
