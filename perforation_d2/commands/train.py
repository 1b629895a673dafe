"""``python -m perforation_d2 train``: ``train_net.py`` for an installed package (same arguments)."""

from __future__ import annotations

from collections.abc import Sequence

from ..engine.launch import cli

HELP = "train or evaluate a model (the arguments of train_net.py: --config-file, --resume, ...)"


def main(argv: Sequence[str]) -> int:
    """Parse Detectron2's training arguments from ``argv`` and train (or ``--eval-only``)."""
    return cli(list(argv))
