"""Training entry point: Detectron2's argument parser, the trainer, and ``launch`` for DDP.

``train_net.py`` (the Detectron2-style script) and ``python -m perforation_d2 train`` both call
:func:`cli`; each worker process runs :func:`main`.
"""

from __future__ import annotations

import argparse
import sys

from detectron2.engine import default_argument_parser, launch

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


def main(args: argparse.Namespace) -> dict | None:
    """Train (or evaluate with ``--eval-only``) in one process of a possibly distributed job."""
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

