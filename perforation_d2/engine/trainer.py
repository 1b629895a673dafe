"""The Detectron2 trainer of perforation_d2 and the configuration set-up of ``train_net.py``.

:class:`Trainer` is Detectron2's :class:`~detectron2.engine.DefaultTrainer` with:

- the clip mapper (:class:`~perforation_d2.data.DSAClipMapper`) in the train and test loaders;
- the series-level evaluator (:class:`~perforation_d2.evaluation.DSASeriesEvaluator`);
- the paper's LR schedule (cosine after an exponential warm-up, :mod:`.lr_scheduler`);
- :class:`~detectron2.engine.hooks.BestCheckpointer` on ``dsa/<TEST.DSA.BEST_METRIC>`` of the
  first test set (``model_best.pth``) when ``TEST.EVAL_PERIOD > 0``, its best score kept across ``--resume``;
- the operating point chosen on the validation set stored in ``operating_point.json`` and in the
  checkpoints (:mod:`.hooks`);
- checkpoints that load with ``weights_only=True`` and are written atomically (:mod:`.checkpoint`);
- an exact ``--resume``: checkpoints also hold the RNG states and RetinaNet's loss normaliser, and
  the training sampler skips what the first iterations consumed, so that a run killed and
  resumed ends with the weights of an uninterrupted one (CPU, ``DATALOADER.NUM_WORKERS 0``);
- ``DATALOADER.DSA_POSITIVE_FRACTION``: a training sampler that puts a set share of frames with a
  box in the batches (:class:`~.train_loop.PositiveFrameSampler`);
- the time-use diagnostic (``TEST.DSA.CLIP_ABLATION``, ``TEST.DSA.TIME_USE_DIAGNOSTIC``, :mod:`.time_use`);
- ``metrics.json`` lines every ``SOLVER.LOG_PERIOD`` iterations (exact values with 1);
- non-finite losses reported with the iteration and the batch's sample ids (:mod:`.train_loop`);
- DDP on CPU (gloo) as well as on GPUs (NCCL): Detectron2's ``create_ddp_model`` passes
  ``device_ids=[local_rank]``, which DistributedDataParallel refuses for CPU modules.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup, hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger
from fvcore.nn.precise_bn import get_bn_modules
from torch.nn.parallel import DistributedDataParallel

from ..config import CONFIG_DIR, add_perforation_config
from ..data import DSAClipMapper, register_cohort_dir, register_dsa_cohort, register_dsa_splits
from ..data.clip_ablation import AblatedClipMapper, check_clip_ablation
from ..data.cohort import load_cohort, series_labels
from ..data.mapper import check_clip_frame_times, check_input_config
from ..errors import DSAInputError
from ..evaluation import DSASeriesEvaluator
from ..io.json_io import read_json
from .checkpoint import LossNormalizerStates, SafeDetectionCheckpointer
from .determinism import RNGStates, seed_all
from .hooks import FinalCheckpointer, ResumableBestCheckpointer
from .lr_scheduler import build_lr_scheduler
from .operating_point import OperatingPoint
from .time_use import time_use_diagnostic, time_use_lines
from .train_loop import (
    DSAAMPTrainer,
    DSASimpleTrainer,
    PositiveFrameSampler,
    ResumableTrainingSampler,
    has_box,
)

logger = logging.getLogger(__name__)


def create_ddp_model(model: torch.nn.Module, **kwargs: Any) -> torch.nn.Module:
    """Wrap ``model`` in DDP when several processes run; ``device_ids`` only for GPU modules."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).device.type == "cuda":
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    return DistributedDataParallel(model, **kwargs)


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer for DSA clips (see the module doc for what differs)."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__, with our DDP wrapper, step trainer and checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        bare_model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, bare_model)
        data_loader, self.train_sampler = self._train_loader_and_sampler(cfg)
        model = create_ddp_model(bare_model, broadcast_buffers=False)
        step_trainer = DSAAMPTrainer if cfg.SOLVER.AMP.ENABLED else DSASimpleTrainer
        self._trainer = step_trainer(
            model, data_loader, optimizer, stop_on_nonfinite=cfg.SOLVER.STOP_ON_NONFINITE_LOSS
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.operating_point = OperatingPoint(cfg.TEST.DSA.OPERATING_POINT, cfg.TEST.DSA.SERIES_OPTIMIZATION)
        self.checkpointer = SafeDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trainer=weakref.proxy(self),
            operating_point=self.operating_point,
            rng_states=RNGStates(),
            loss_normalizers=LossNormalizerStates(bare_model),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self) -> OrderedDict | dict | None:
        """Detectron2's training loop, then the time-use diagnostic with ``TEST.DSA.TIME_USE_DIAGNOSTIC``."""
        results = super().train()
        if self.cfg.TEST.DSA.TIME_USE_DIAGNOSTIC and self.cfg.DATASETS.TEST and self.iter >= self.max_iter:
            # The final evaluation (EvalHook's, just run on this model) is the "none" entry.
            normal = getattr(self, "_last_eval_results", None)
            for line in time_use_lines(time_use_diagnostic(type(self), self.cfg, self.model, normal_results=normal)):
                logger.info(line)
        return results

    def resume_or_load(self, resume: bool = True) -> None:
        """Detectron2's resume, plus the training sample stream continued where it stopped."""
        super().resume_or_load(resume=resume)
        if self.train_sampler is not None:
            self.train_sampler.start_iter = self.start_iter

    # ---- builders --------------------------------------------------------------------------
    @classmethod
    def _train_loader_and_sampler(cls, cfg: CfgNode):
        """The training loader and, for Detectron2's default TrainingSampler, its resumable sampler."""
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        # Before the first step, not at the first clip of such a series in a loader worker.
        check_clip_frame_times(dataset, cfg.MODEL.TEMPORAL.CLIP_SPAN_MS, ", ".join(cfg.DATASETS.TRAIN))
        sampler = None
        per_rank_batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        if cfg.DATALOADER.DSA_POSITIVE_FRACTION > 0:
            if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
                raise DSAInputError(
                    f"config: DATALOADER.DSA_POSITIVE_FRACTION and DATALOADER.SAMPLER_TRAIN "
                    f"{cfg.DATALOADER.SAMPLER_TRAIN!r} both choose the training frames; set one of them."
                )
            sampler = PositiveFrameSampler([has_box(d) for d in dataset], cfg.DATALOADER.DSA_POSITIVE_FRACTION,
                                           per_rank_batch)
        elif cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            sampler = ResumableTrainingSampler(len(dataset), per_rank_batch)
        loader = build_detection_train_loader(
            cfg,
            dataset=dataset,
            mapper=DSAClipMapper(cfg, True),
            sampler=sampler,
            # A dedicated generator seeds the loader workers, so creating the loader iterator
            # draws nothing from torch's global RNG (which the checkpoints save and restore).
            seed=cfg.SEED if cfg.SEED >= 0 else None,
        )
        return loader, sampler

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return cls._train_loader_and_sampler(cfg)[0]

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = DSAClipMapper(cfg, False)
        if cfg.TEST.DSA.CLIP_ABLATION != "none":
            mapper = AblatedClipMapper(mapper, cfg.TEST.DSA.CLIP_ABLATION)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DSASeriesEvaluator(
            dataset_name, output_dir=output_folder, series_optimization=cfg.TEST.DSA.SERIES_OPTIMIZATION
        )

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Detectron2's ``test``; with ``TEST.DSA.CACHED_SERIES_INFERENCE`` series by series,
        the backbone run once per frame (:mod:`perforation_d2.evaluation.inference`).

        Both paths apply ``TEST.DSA.CLIP_ABLATION`` (the test loader reorders each clip's frames,
        cached inference the per-frame features of each clip window)."""
        check_clip_ablation(cfg.TEST.DSA.CLIP_ABLATION)
        if not cfg.TEST.DSA.CACHED_SERIES_INFERENCE:
            return super().test(cfg, model, evaluators)
        from ..evaluation.inference import cached_series_test

        return cached_series_test(cls, cfg, model, evaluators)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    def build_hooks(self) -> list[hooks.HookBase]:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # PreciseBN's own loader: save memory and time
        evaluating = cfg.TEST.EVAL_PERIOD > 0 and len(cfg.DATASETS.TEST) > 0
        ret: list[hooks.HookBase | None] = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            hooks.PreciseBN(
                cfg.TEST.EVAL_PERIOD, self.model, self.build_train_loader(cfg), cfg.TEST.PRECISE_BN.NUM_ITER
            )
            if cfg.TEST.PRECISE_BN.ENABLED and get_bn_modules(self.model)
            else None,
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate_and_choose_operating_point),
        ]
        if comm.is_main_process():
            if evaluating:
                ret.append(
                    ResumableBestCheckpointer(cfg.TEST.EVAL_PERIOD, self.checkpointer, best_metric_key(cfg), "max")
                )
            # After the evaluation hooks: model_final then carries the final operating point.
            ret.append(FinalCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=cfg.SOLVER.LOG_PERIOD))
        return [hook for hook in ret if hook is not None]

    def build_writers(self) -> list:
        """Detectron2's writers; ``metrics.json`` and TensorBoard summarise each ``SOLVER.LOG_PERIOD``.

        Detectron2 writes the median of the last 20 iterations every 20 iterations; here the
        window is the logging period, so each line summarises the iterations since the previous
        one (``LOG_PERIOD 1``: the exact value of every iteration).
        """
        period = self.cfg.SOLVER.LOG_PERIOD
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), window_size=period),
            TensorboardXWriter(self.cfg.OUTPUT_DIR, window_size=period),
        ]

    # ---- evaluation and operating point ----------------------------------------------------
    def _evaluate_and_choose_operating_point(self) -> dict[str, Any]:
        self._last_eval_results = self.test(self.cfg, self.model)
        if comm.is_main_process() and self.cfg.DATASETS.TEST:
            self._update_operating_point(self._last_eval_results)
        return self._last_eval_results

    def _update_operating_point(self, results: Mapping[str, Any]) -> None:
        dataset = self.cfg.DATASETS.TEST[0]
        # DefaultTrainer.test returns the evaluator's dict directly for a single test set.
        per_dataset = results if len(self.cfg.DATASETS.TEST) > 1 else {dataset: results}
        metrics = per_dataset.get(dataset, {}).get("dsa")
        if metrics is None:
            return
        labels = scores = None
        if self.operating_point.method == "spec95":
            labels, scores = _validation_series(dataset, os.path.join(self.cfg.OUTPUT_DIR, "inference", dataset))
        iterations_trained = min(self.iter + 1, self.max_iter)
        if self.operating_point.update(metrics, dataset, iterations_trained, labels, scores):
            path = self.operating_point.write(self.cfg.OUTPUT_DIR)
            logger.info(f"Operating point ({self.operating_point.method}) on {dataset}: "
                        f"threshold {self.operating_point.state['threshold']:.4f}, written to {path}")
        else:
            logger.warning(f"No {self.operating_point.method} operating point on {dataset} after "
                           f"{iterations_trained} iterations (one class only, or no threshold better than "
                           "chance); keeping the previous one.")


def best_metric_key(cfg: CfgNode) -> str:
    """The event-storage key of ``TEST.DSA.BEST_METRIC`` on the validation set (``DATASETS.TEST[0]``).

    ``test`` returns the evaluator's ``{"dsa": {...}}`` directly for one test set but one such dict
    per dataset for several, which EvalHook flattens to ``"<dataset>/dsa/<metric>"``.
    """
    key = f"dsa/{cfg.TEST.DSA.BEST_METRIC}"
    return key if len(cfg.DATASETS.TEST) <= 1 else f"{cfg.DATASETS.TEST[0]}/{key}"


def _validation_series(dataset: str, evaluator_dir: str) -> tuple[dict[int, int], dict[str, float]]:
    """Labels and scores of the series the evaluator of ``dataset`` just scored."""
    meta = MetadataCatalog.get(dataset)
    scores = read_json(os.path.join(evaluator_dir, "series_scores.json"), "series scores file")
    labels = series_labels(load_cohort(meta.json_file, meta.image_root, check_images=False))
    return {vid: label for vid, label in labels.items() if str(vid) in scores}, scores


# ---- configuration -------------------------------------------------------------------------
def resolve_config_file(path: str) -> str:
    """``path``, or the packaged config it names when it does not exist here.

    ``configs/quick/retinanet.yaml`` (the README's spelling, relative to a checkout) then also
    works from an installed package, in any folder.
    """
    if os.path.isfile(path):
        return path
    name = Path(path).as_posix()
    name = name.split("configs/", 1)[1] if "configs/" in name else name
    packaged = CONFIG_DIR / name
    if not Path(path).is_absolute() and packaged.is_file():
        return str(packaged)
    raise DSAInputError(f"{path}: config file not found (the packaged configs are under {CONFIG_DIR}).")


def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args.config_file`` + ``args.opts``, with COHORT_DIRS registered.

    No side effect besides dataset registration, so ``train_net.py`` can check a config in the
    launching process before starting workers.
    """
    cfg = get_cfg()
    add_perforation_config(cfg)
    if args.config_file:
        config_file = resolve_config_file(args.config_file)
        try:
            cfg.merge_from_file(config_file)
        except Exception as err:  # yacs / YAML raise many types for a malformed file; all are the file's fault
            raise DSAInputError(f"{config_file}: invalid config ({type(err).__name__}: {err}).") from None
    try:
        cfg.merge_from_list(list(args.opts or []))
    except (KeyError, ValueError, TypeError, AssertionError) as err:
        raise DSAInputError(f"command line: invalid config override {list(args.opts)}: {err}.") from None
    check_input_config(cfg)
    for folder in cfg.DATASETS.DSA.COHORT_DIRS:
        register_cohort_dir(folder)
    if cfg.DATASETS.DSA.COHORT_JSON:
        register_dsa_cohort(cfg.DATASETS.DSA.COHORT_NAME, cfg.DATASETS.DSA.COHORT_JSON)
        if cfg.DATASETS.DSA.SPLITS_JSON:
            register_dsa_splits(cfg.DATASETS.DSA.SPLITS_JSON, cfg.DATASETS.DSA.COHORT_NAME, cfg.DATASETS.DSA.COHORT_JSON)
    cfg.freeze()
    return cfg


def _sync_bn_keys(node: CfgNode, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, CfgNode):
            keys += _sync_bn_keys(value, f"{prefix}{key}.")
        elif key == "NORM" and value == "SyncBN":
            keys.append(prefix + key)
    return keys


def prepare_launch(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Checks and settings for ``train_net.py``, in the launching process, before any worker starts.

    - A new training (no ``--resume``) never runs into an OUTPUT_DIR that already holds one: its
      checkpoints would be overwritten and its ``metrics.json`` mixed with the new run's.
    - Several CPU workers need gloo: Detectron2's ``launch`` picks NCCL whenever CUDA is visible,
      so CUDA is hidden from the workers, and SyncBN (GPU only) is refused.
    """
    if not args.eval_only and not args.resume and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        raise DSAInputError(
            f"{cfg.OUTPUT_DIR}: this OUTPUT_DIR already holds a training (last_checkpoint); pass --resume to "
            "continue it, or choose another OUTPUT_DIR (nothing was written)."
        )
    world_size = args.num_gpus * args.num_machines
    if cfg.MODEL.DEVICE == "cpu" and world_size > 1:
        sync_bn = _sync_bn_keys(cfg)
        if sync_bn:
            raise DSAInputError(
                f"config: {', '.join(sync_bn)} is SyncBN, which needs GPUs; distributed training on CPU "
                "(gloo) needs GN, BN or FrozenBN."
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def setup(args: argparse.Namespace) -> CfgNode:
    """Config, logging, output folder and seeding for one (possibly distributed) process."""
    cfg = build_config(args)
    default_setup(cfg, args)
    if cfg.SEED >= 0:
        # default_setup seeded every RNG with SEED + rank; add deterministic kernels.
        seed_all(cfg.SEED + comm.get_rank(), deterministic=True)
    return cfg


def evaluate_checkpoint(cfg: CfgNode, resume: bool = False) -> OrderedDict | dict:
    """``--eval-only``: load MODEL.WEIGHTS (or the last checkpoint with ``resume``) and evaluate."""
    resuming = resume and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if not cfg.MODEL.WEIGHTS and not resuming:
        raise DSAInputError(
            "--eval-only needs trained weights: set MODEL.WEIGHTS path/to/model.pth, or pass --resume with "
            "the OUTPUT_DIR of a training."
        )
    model = Trainer.build_model(cfg)
    checkpointer = SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    source = checkpointer.get_checkpoint_file() if resuming else cfg.MODEL.WEIGHTS
    warn_if_selected_on(checkpoint, source, cfg.DATASETS.TEST)
    if cfg.TEST.DSA.TIME_USE_DIAGNOSTIC and cfg.DATASETS.TEST:
        summary = time_use_diagnostic(Trainer, cfg, model)
        for line in time_use_lines(summary):
            logger.info(line)
    return Trainer.test(cfg, model)


def warn_if_selected_on(checkpoint: Mapping[str, Any], source: str, datasets: Sequence[str]) -> bool:
    """Warn when a best-metric checkpoint (``model_best``) is evaluated on the data it was chosen on.

    ``BestCheckpointer`` keeps the iteration whose validation metric was highest, so that metric,
    measured again on the same validation set, is biased upwards (the maximum of noisy
    estimates). The checkpoint's operating point names the dataset it was chosen on. Returns True
    if it warned.
    """
    point = checkpoint.get("operating_point") or {}
    chosen_on = point.get("dataset") if isinstance(point, Mapping) else None
    if not os.path.basename(str(source)).startswith("model_best") or chosen_on not in datasets:
        return False
    message = (f"{source} is the best-metric checkpoint chosen on {chosen_on}, which is being evaluated again: "
               "its figures there are optimistic (the best of several evaluations on the same series). Report "
               "model_final.pth, or evaluate model_best on series it was not selected on.")
    logger.warning(message)
    print(f"warning: {message}", file=sys.stderr)
    return True
