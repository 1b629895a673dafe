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
- ``metrics.json`` lines every ``SOLVER.LOG_PERIOD`` iterations (exact values with 1);
- non-finite losses reported with the iteration and the batch's sample ids (:mod:`.train_loop`);
- DDP on CPU (gloo) as well as on GPUs (NCCL): Detectron2's ``create_ddp_model`` passes
  ``device_ids=[local_rank]``, which DistributedDataParallel refuses for CPU modules.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Mapping
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

from ..config import add_perforation_config
from ..data import DSAClipMapper, register_cohort_dir
from ..data.cohort import load_cohort, series_labels
from ..errors import DSAInputError
from ..evaluation import DSASeriesEvaluator
from .checkpoint import LossNormalizerStates, SafeDetectionCheckpointer
from .determinism import RNGStates, seed_all
from .hooks import FinalCheckpointer, OperatingPoint, ResumableBestCheckpointer
from .lr_scheduler import build_lr_scheduler
from .train_loop import DSAAMPTrainer, DSASimpleTrainer, ResumableTrainingSampler

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
        sampler = None
        if cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler":
            per_rank_batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
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
        return build_detection_test_loader(cfg, dataset_name, mapper=DSAClipMapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None) -> DatasetEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return DSASeriesEvaluator(
            dataset_name, output_dir=output_folder, series_optimization=cfg.TEST.DSA.SERIES_OPTIMIZATION
        )

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """Detectron2's ``test``; with ``TEST.DSA.CACHED_SERIES_INFERENCE`` series by series,
        the backbone run once per frame (:mod:`perforation_d2.modeling.series_inference`)."""
        if not cfg.TEST.DSA.CACHED_SERIES_INFERENCE:
            return super().test(cfg, model, evaluators)
        from ..modeling.series_inference import cached_series_test

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
    with open(os.path.join(evaluator_dir, "series_scores.json"), encoding="utf-8") as handle:
        scores = json.load(handle)
    labels = series_labels(load_cohort(meta.json_file, meta.image_root, check_images=False))
    return {vid: label for vid, label in labels.items() if str(vid) in scores}, scores


# ---- configuration -------------------------------------------------------------------------
def build_config(args: argparse.Namespace) -> CfgNode:
    """The frozen config of ``args.config_file`` + ``args.opts``, with COHORT_DIRS registered.

    No side effect besides dataset registration, so ``train_net.py`` can check a config in the
    launching process before starting workers.
    """
    cfg = get_cfg()
    add_perforation_config(cfg)
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise DSAInputError(f"{args.config_file}: config file not found.")
        try:
            cfg.merge_from_file(args.config_file)
        except (KeyError, ValueError, TypeError, AssertionError) as err:
            raise DSAInputError(f"{args.config_file}: invalid config: {err}.") from None
    try:
        cfg.merge_from_list(list(args.opts or []))
    except (KeyError, ValueError, TypeError, AssertionError) as err:
        raise DSAInputError(f"command line: invalid config override {list(args.opts)}: {err}.") from None
    for folder in cfg.DATASETS.DSA.COHORT_DIRS:
        register_cohort_dir(folder)
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
    SafeDetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    return Trainer.test(cfg, model)
