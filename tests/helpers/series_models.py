"""Quick models and random series for the series-inference, top-1 and precision tests.

The quick configs at 64 px, built with seeded random weights; :func:`widen_heads` draws the heads
wider than at initialisation so that frame scores spread out and each frame's top detection is
well defined (with the prior-probability init every anchor scores ~0.01).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from detectron2.config import get_cfg

import perforation_d2

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "quick"
FRAME_SIZE = 64


def quick_cfg(name: str, *opts: str):
    """The quick config ``name`` at :data:`FRAME_SIZE` px, then ``opts``."""
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(["INPUT.FRAME_SIZE", str(FRAME_SIZE), *opts])
    return cfg


def widen_heads(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """Every head parameter (dense head, RPN, ROI heads) redrawn from N(0, std), in place."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(("head.", "roi_heads.", "proposal_generator.")):
                param.normal_(0.0, std)
    return model


def random_frames(num_frames: int, height: int = 72, width: int = 88, seed: int = 0) -> np.ndarray:
    """``(F, H, W)`` uniform random uint8 frames."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_frames, height, width), dtype=np.uint8)
