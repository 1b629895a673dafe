#!/usr/bin/env python
"""Train or evaluate a perforation_d2 model with Detectron2.

    python train_net.py --config-file configs/quick/<variant>.yaml OUTPUT_DIR out/run
    python train_net.py --config-file CFG --resume            # continue from OUTPUT_DIR/last_checkpoint
    python train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/run/model_best.pth

The trainer (``perforation_d2.engine.Trainer``) is Detectron2's DefaultTrainer with the clip
mapper, the series-level evaluator, the paper's LR schedule, BestCheckpointer and safe
checkpoints; ``perforation_d2.engine.launch`` parses the arguments and starts the workers.
``python -m perforation_d2 train`` is the same command for an installed package.
"""

import sys

from perforation_d2.engine.launch import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    sys.exit(cli())
