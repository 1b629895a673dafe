"""Training machinery: the Detectron2 trainer, LR schedule, safe checkpoints, hooks and seeding."""

from .checkpoint import SafeDetectionCheckpointer, safe_pickle_load, safe_torch_load
from .determinism import seed_all
from .hooks import FinalCheckpointer, ResumableBestCheckpointer
from .lr_scheduler import ExponentialWarmupParamScheduler, build_lr_multiplier, build_lr_scheduler
from .operating_point import OPERATING_POINT_FILE, OperatingPoint
from .train_loop import NonFiniteLossError, batch_sample_ids
from .trainer import Trainer, build_config, evaluate_checkpoint, prepare_launch, setup

__all__ = [
    "OPERATING_POINT_FILE",
    "ExponentialWarmupParamScheduler",
    "FinalCheckpointer",
    "NonFiniteLossError",
    "OperatingPoint",
    "ResumableBestCheckpointer",
    "SafeDetectionCheckpointer",
    "Trainer",
    "batch_sample_ids",
    "build_config",
    "build_lr_multiplier",
    "build_lr_scheduler",
    "evaluate_checkpoint",
    "prepare_launch",
    "safe_pickle_load",
    "safe_torch_load",
    "seed_all",
    "setup",
]
