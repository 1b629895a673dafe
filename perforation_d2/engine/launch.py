"""Training entry point: Detectron2's argument parser, the trainer, and ``launch`` for DDP.

``train_net.py`` (the Detectron2-style script) and ``python -m perforation_d2 train`` both call
:func:`cli`; each worker process runs :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from detectron2.engine import default_argument_parser, launch
from detectron2.utils import logger as d2_logger

from ..errors import DSAInputError
from .train_loop import NonFiniteLossError
from .trainer import Trainer, build_config, evaluate_checkpoint, prepare_launch, setup

EPILOG = """
Distributed training (Detectron2's launch): --num-gpus N starts N worker processes on this
machine. On a machine with CUDA each worker drives one GPU and they communicate with NCCL; on a
machine without CUDA, or with MODEL.DEVICE cpu, the N workers run on the CPU and communicate with
gloo (CUDA is hidden from them), which is how the tests exercise DDP; SyncBN needs GPUs, so CPU
configs use GN, BN or FrozenBN.
Several machines: --num-machines M --machine-rank R --dist-url tcp://HOST:PORT on each machine;
--dist-url auto picks a free local port (one machine only).

Examples:
  python train_net.py --config-file configs/quick/retinanet_tconv_T5.yaml OUTPUT_DIR out/quick
  python train_net.py --num-gpus 2 --dist-url auto --config-file CFG MODEL.DEVICE cpu
  python train_net.py --config-file CFG --resume OUTPUT_DIR out/run   # after a crash or a kill
  python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/run/model_best.pth
"""


@contextlib.contextmanager
def restored_logging() -> Iterator[None]:
    """Undo, on exit, the log handlers (and levels) that Detectron2's ``setup_logger`` installs.

    ``setup_logger`` is cached and binds a handler to the ``sys.stdout`` of the moment: after an
    in-process run (tests, notebooks, ``cli`` called twice) that handler would write to a stream
    that may be closed by then, and every later log call prints a logging traceback. The handlers
    added during the run are removed and their log files closed, the caches cleared, so the next
    run sets logging up afresh.
    """
    def all_loggers() -> list[logging.Logger]:
        known = logging.Logger.manager.loggerDict.values()
        return [logging.getLogger(), *(logger for logger in known if isinstance(logger, logging.Logger))]

    before = {id(logger): (list(logger.handlers), logger.level, logger.propagate) for logger in all_loggers()}
    try:
        yield
    finally:
        for logger in all_loggers():
            handlers, level, propagate = before.get(id(logger), (None, logger.level, logger.propagate))
            for handler in [h for h in logger.handlers if h not in (handlers or [])]:
                logger.removeHandler(handler)
                handler.close()
                stream = getattr(handler, "stream", None)
                if os.path.basename(str(getattr(stream, "name", ""))).startswith("log.txt"):
                    stream.close()  # OUTPUT_DIR/log.txt, opened (and cached) by setup_logger
            logger.setLevel(level)
            logger.propagate = propagate
        d2_logger.setup_logger.cache_clear()
        d2_logger._cached_log_stream.cache_clear()


def main(args: argparse.Namespace) -> dict | None:
    """Train (or evaluate with ``--eval-only``) in one process of a possibly distributed job."""
    with restored_logging():
        cfg = setup(args)
        if args.eval_only:
            return evaluate_checkpoint(cfg, resume=args.resume)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def cli(argv: list[str] | None = None) -> int:
    """``train_net.py`` / ``python -m perforation_d2 train``: parse Detectron2's arguments and launch."""
    args = default_argument_parser(epilog=EPILOG).parse_args(argv)
    try:
        # Check the config here, before workers start, so a bad config is one clear message.
        prepare_launch(build_config(args), args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except DSAInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0

