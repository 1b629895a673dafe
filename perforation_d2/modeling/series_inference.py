"""Cached sliding-window inference over whole DSA series.

The naive way to predict a series of F frames feeds F clips of T frames to the model, so the
spatial backbone (the most expensive part of the network) runs F*T times and every frame's
features are recomputed T times. :class:`SeriesPredictor` runs the spatial backbone once per frame
(``TemporalBackbone.forward_frames``), keeps a sliding window of per-frame features, and builds
each centre frame's clip from that window before the temporal module (``fuse``) and the head.

Clips follow the data layer exactly (SPEC section 2): the clip of centre frame ``t`` is frames
``clamp(t-k .. t+k)``. Think of the series padded with ``k`` copies of its first and last frame:
the clip of ``t`` is then the ``T`` consecutive entries starting at padded index ``t``, so the
clips of ``B`` consecutive centre frames are the ``T``-long windows of ``B + T - 1`` consecutive
padded entries, taken as views (``unfold``) without copying features ``T`` times.

Memory is bounded by the window, not the series: at most ``B + T - 1`` frames of features are
held at any time (``B`` = centre frames per batch; plus one stacked copy of them while the
temporal module runs), so a 60-frame series at 1024 px costs what a short one does.
:attr:`SeriesPredictor.peak_window_frames` records the largest window seen.

Both paths compute the same numbers: on CPU they agree to the last bit in our tests. On CUDA,
PyTorch runs convolutions in TF32 by default, and the two paths batch different frames together,
so cuDNN may pick different kernels; with TF32 the scores differed by up to ~1e-4 and boxes by up
to ~1e-2 px (seen on an H200 at 640 px). Both paths therefore run their forward with TF32 off
(:func:`tf32_disabled`, for matmuls and cuDNN convolutions, previous settings restored afterwards),
so the remaining differences are plain FP32 rounding. The trade-off is speed: on Ampere and newer
GPUs full-FP32 convolutions and matmuls are slower than TF32 ones (how much depends on the GPU and
the model; the ``benchmark`` command measures it). Training is unaffected, as only inference
through this module switches TF32 off. CPU runs are unchanged.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_context, print_csv_format
from detectron2.layers import move_device_like
from detectron2.modeling import GeneralizedRCNN
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import ImageList, Instances
from detectron2.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.clip_transforms import ClipAffineTransform
from ..data.mapper import read_grey_frame
from ..errors import DSAInputError

logger = logging.getLogger(__name__)

Features = dict[str, torch.Tensor]


def _as_grey_or_rgb_uint8(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(F, H, W)`` or ``(F, 3, H, W)`` uint8 frames as a CPU uint8 tensor, validated."""
    frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if frames.dtype != torch.uint8:
        raise ValueError(f"series frames must be uint8, got {frames.dtype}")
    if frames.dim() not in (3, 4) or (frames.dim() == 4 and frames.shape[1] != 3) or len(frames) == 0:
        raise ValueError(f"series frames must be (F, H, W) or (F, 3, H, W) with F >= 1, got {tuple(frames.shape)}")
    return frames.cpu()


def resize_frames(frames: torch.Tensor, frame_size: int) -> torch.Tensor:
    """``(F, H, W)`` or ``(F, 3, H, W)`` uint8 -> ``(F, 3, S, S)`` uint8, resized as the test-time mapper does.

    The mapper resizes with :meth:`ClipAffineTransform.resize` (bilinear, in uint8) and replicates
    the grey frame to 3 channels; the same transform is used here so both paths see identical pixels.
    """
    height, width = int(frames.shape[-2]), int(frames.shape[-1])
    transform = ClipAffineTransform.resize(height, width, frame_size, frame_size)
    planes = [np.ascontiguousarray(p) for p in frames.reshape(-1, height, width).numpy()]
    resized = torch.from_numpy(np.stack(transform.apply_frames(planes)))
    if frames.dim() == 3:
        return resized.unsqueeze(1).expand(-1, 3, -1, -1)
    return resized.view(len(frames), 3, frame_size, frame_size)


@contextmanager
def tf32_disabled() -> Iterator[None]:
    """Run the body with TF32 off for CUDA matmuls and cuDNN convolutions; restore the settings after.

    TF32 rounds inputs to 10 mantissa bits, so results depend on which kernels cuDNN picks for a
    batch; in full FP32 the cached and the naive path agree (no effect on CPU).
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def top1(instances: Instances) -> Instances:
    """The highest-scoring detection (the first one on ties), or an empty ``Instances``."""
    if len(instances) == 0:
        return instances
    best = int(torch.argmax(instances.scores))
    return instances[best : best + 1]


class SeriesPredictor:
    """Predict every frame of a series with the backbone run once per frame.

    Works for :class:`TemporalRetinaNet` (any Detectron2 ``DenseDetector``) and
    :class:`TemporalGeneralizedRCNN` (any ``GeneralizedRCNN``, Cascade included) whose backbone
    follows the ``TemporalBackbone`` contract, and for plain single-frame Detectron2 models (T=1).

    Args:
        model: the detector, in eval mode (the predictor does not change its mode).
        frame_size: the model's input size, ``cfg.INPUT.FRAME_SIZE`` (frames are resized to it
            exactly as the test-time mapper does).
        batch_size: centre frames per temporal/head batch; the window holds at most
            ``batch_size + T - 1`` frames of features.
        allow_tf32: keep PyTorch's TF32 setting on CUDA (``TEST.DSA.ALLOW_TF32``): faster, but
            no longer equal to the naive path within 1e-4.
    """

    def __init__(self, model: nn.Module, frame_size: int, batch_size: int = 4, allow_tf32: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not isinstance(model, (DenseDetector, GeneralizedRCNN)):
            raise TypeError(f"cached series inference supports RetinaNet and R-CNN models, not {type(model).__name__}")
        self.model = model
        self.frame_size = int(frame_size)
        self.batch_size = int(batch_size)
        self.allow_tf32 = bool(allow_tf32)
        backbone = model.backbone
        self.num_frames = int(getattr(backbone, "num_frames", 1))
        if self.num_frames < 1 or self.num_frames % 2 == 0:
            raise ValueError(f"the clip length T must be odd and >= 1, got {self.num_frames}")
        self._is_temporal = hasattr(backbone, "forward_frames") and hasattr(backbone, "fuse")
        # Instrumentation: the largest number of frames whose features were held at once, and
        # how many times the spatial backbone ran on a frame (once per frame is the point).
        self.peak_window_frames = 0
        self.backbone_frames = 0

    # ---- the three stages ----------------------------------------------------------------
    def _preprocess(self, frames: torch.Tensor) -> ImageList:
        """Resize, normalise and pad frames exactly as the mapper and the meta-architecture do."""
        model = self.model
        clip = resize_frames(frames, self.frame_size)  # (M, 3, S, S) uint8
        images = move_device_like(clip, model.pixel_mean).float()
        images = (images - model.pixel_mean) / model.pixel_std
        return ImageList.from_tensors(
            list(images),
            model.backbone.size_divisibility,
            padding_constraints=model.backbone.padding_constraints,
        )

    def _frame_features(self, images: torch.Tensor) -> Features:
        backbone = self.model.backbone
        self.backbone_frames += len(images)
        if self._is_temporal:
            return backbone.forward_frames(images)
        return backbone(images)

    def _fuse(self, clips: Features) -> Features:
        if self.num_frames == 1:
            # T = 1: the temporal backbone equals the spatial one; no temporal module runs.
            return {level: x[:, 0] for level, x in clips.items()}
        return self.model.backbone.fuse(clips)

    def _head(self, features: Features, image_sizes: list[tuple[int, int]]) -> list[Instances]:
        """Detections of each centre frame, in the (resized, unpadded) model input frame."""
        model = self.model
        some = next(iter(features.values()))
        # The heads read only the image sizes (and the device) from the ImageList.
        images = ImageList(some.new_zeros((len(image_sizes), 0, *image_sizes[0])), image_sizes)
        if isinstance(model, DenseDetector):
            head_features = [features[f] for f in model.head_in_features]
            predictions = model.head(head_features)
            return model.forward_inference(images, head_features, predictions)
        proposals, _ = model.proposal_generator(images, features, None)
        results, _ = model.roi_heads(images, features, proposals, None)
        return results

    # ---- the series loop -----------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, frames: np.ndarray | torch.Tensor) -> list[Instances]:
        """Top-1 ``Instances`` of every frame, boxes in original-frame pixels.

        ``frames``: the whole series, ``(F, H, W)`` grey or ``(F, 3, H, W)``, uint8. Runs with TF32
        off (:func:`tf32_disabled`) unless ``allow_tf32``, so that it matches
        :func:`naive_predict_series` on GPU too.
        """
        with nullcontext() if self.allow_tf32 else tf32_disabled():
            return self._predict(frames)

    def _predict(self, frames: np.ndarray | torch.Tensor) -> list[Instances]:
        frames = _as_grey_or_rgb_uint8(frames)
        num_series_frames = len(frames)
        height, width = int(frames.shape[-2]), int(frames.shape[-1])
        clip_len, half = self.num_frames, self.num_frames // 2
        window: dict[int, Features] = {}  # frame index -> its features, each (C, h, w)
        next_frame = 0  # first frame whose features are not computed yet
        image_size: tuple[int, int] | None = None
        outputs: list[Instances] = []
        for start in range(0, num_series_frames, self.batch_size):
            stop = min(num_series_frames, start + self.batch_size)
            first_needed = max(0, start - half)
            last_needed = min(num_series_frames - 1, stop - 1 + half)
            for index in [i for i in window if i < first_needed]:
                del window[index]
            if next_frame <= last_needed:
                images = self._preprocess(frames[next_frame : last_needed + 1])
                image_size = images.image_sizes[0]
                features = self._frame_features(images.tensor)
                for offset, index in enumerate(range(next_frame, last_needed + 1)):
                    # clone: a view would keep the whole chunk's storage alive after eviction.
                    window[index] = {level: x[offset].clone() for level, x in features.items()}
                del features, images
                next_frame = last_needed + 1
            self.peak_window_frames = max(self.peak_window_frames, len(window))

            # Padded entries start .. stop-1+T-1 hold frames clamp(p - k); their T-windows are the clips.
            entries = [min(max(p - half, 0), num_series_frames - 1) for p in range(start, stop + clip_len - 1)]
            clips = {
                level: torch.stack([window[i][level] for i in entries]).unfold(0, clip_len, 1).permute(0, 4, 1, 2, 3)
                for level in window[entries[0]]
            }  # each (B, T, C, h, w)
            fused = self._fuse(clips)
            del clips
            assert image_size is not None
            results = self._head(fused, [image_size] * (stop - start))
            for result in results:
                outputs.append(top1(detector_postprocess(result, height, width)).to("cpu"))
        return outputs


def naive_predict_series(
    model: nn.Module, frames: np.ndarray | torch.Tensor, frame_size: int, batch_size: int = 4
) -> list[Instances]:
    """The reference path: one clip per frame through ``model(batched_inputs)``, top-1 per frame.

    Builds each clip like the test-time mapper (``clamp(t-k .. t+k)``, resized to ``frame_size``)
    and runs the model's own ``forward``, so the backbone runs T times per frame. Like
    :class:`SeriesPredictor`, it runs with TF32 off.
    """
    frames = _as_grey_or_rgb_uint8(frames)
    clip_len = int(getattr(model.backbone, "num_frames", 1))
    half = clip_len // 2
    height, width = int(frames.shape[-2]), int(frames.shape[-1])
    resized = resize_frames(frames, frame_size)
    outputs: list[Instances] = []
    with torch.no_grad(), tf32_disabled():
        for start in range(0, len(frames), batch_size):
            inputs = []
            for t in range(start, min(len(frames), start + batch_size)):
                indices = [min(max(i, 0), len(frames) - 1) for i in range(t - half, t + half + 1)]
                image = resized[indices] if clip_len > 1 else resized[t]
                inputs.append({"image": image, "height": height, "width": width})
            for output in model(inputs):
                outputs.append(top1(output["instances"]).to("cpu"))
    return outputs


def _series_of_dataset(dataset_dicts: Sequence[dict]) -> list[list[dict]]:
    """Group per-frame dataset dicts by series, frames in order, series in first-seen order."""
    grouped: dict[int, list[dict]] = defaultdict(list)
    for record in dataset_dicts:
        grouped[record["video_id"]].append(record)
    return [sorted(records, key=lambda r: r["frame_id"]) for records in grouped.values()]


def load_series_frames(record: dict, loader: Callable[[str], np.ndarray] = read_grey_frame) -> np.ndarray:
    """All frames of the series of ``record`` (its ``series_file_names``), ``(F, H, W)`` uint8.

    Every frame must have the size the cohort declares (as the mapper checks).
    """
    expected = (record["height"], record["width"])
    frames = []
    for path in record["series_file_names"]:
        frame = loader(path)
        if frame.shape != expected:
            raise DSAInputError(
                f"{path}: the frame is {frame.shape[1]}x{frame.shape[0]} pixels but the cohort declares "
                f"{expected[1]}x{expected[0]} for video {record.get('video_id')}; fix the cohort JSON "
                "or re-export the frame."
            )
        frames.append(frame)
    return np.stack(frames)


def iterate_series_predictions(
    predictor: SeriesPredictor,
    series: Sequence[Sequence[dict]],
    loader: Callable[[str], np.ndarray] = read_grey_frame,
) -> Iterator[tuple[list[dict], list[dict]]]:
    """For each series (its per-frame dataset dicts), yield ``(inputs, outputs)`` in evaluator form.

    The whole series is predicted (clips at a frame's edges see its real neighbours, as in the
    mapper), and outputs are returned for the frames in ``series`` only.
    """
    for records in series:
        instances = predictor(load_series_frames(records[0], loader))
        yield list(records), [{"instances": instances[record["frame_id"]]} for record in records]


def inference_on_cohort(
    model: nn.Module,
    dataset_name: str,
    evaluator: DatasetEvaluator | list[DatasetEvaluator] | None,
    frame_size: int,
    batch_size: int = 4,
    allow_tf32: bool = False,
) -> dict:
    """Like Detectron2's ``inference_on_dataset``, but series by series with cached features.

    Every registered frame of ``dataset_name`` gets its output; the evaluator's ``process`` is
    called once per series with that series' frame dicts and outputs. Series (not frames) are
    sharded across processes, so each series is predicted whole by one worker.
    """
    if isinstance(model, DistributedDataParallel):
        model = model.module
    all_series = _series_of_dataset(DatasetCatalog.get(dataset_name))
    my_series = all_series[comm.get_rank() :: comm.get_world_size()]
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, list):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()
    predictor = SeriesPredictor(model, frame_size=frame_size, batch_size=batch_size, allow_tf32=allow_tf32)
    num_frames = sum(len(s) for s in my_series)
    logger.info(f"Start cached series inference on {len(my_series)} series ({num_frames} frames) of {dataset_name}")
    start_time = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        for inputs, outputs in iterate_series_predictions(predictor, my_series):
            evaluator.process(inputs, outputs)
    elapsed = time.perf_counter() - start_time
    logger.info(
        f"Total cached series inference time: {datetime.timedelta(seconds=int(elapsed))} "
        f"({elapsed / max(1, num_frames):.6f} s / frame per device, on {comm.get_world_size()} devices; "
        f"backbone ran on {predictor.backbone_frames} frames)"
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
            model, dataset_name, evaluator, cfg.INPUT.FRAME_SIZE, allow_tf32=cfg.TEST.DSA.ALLOW_TF32
        )
        if comm.is_main_process():
            logger.info(f"Evaluation results for {dataset_name} in csv format:")
            print_csv_format(results[dataset_name])
    if len(results) == 1:
        return next(iter(results.values()))
    return results
