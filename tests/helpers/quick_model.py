"""A quick model for command tests: randomly initialised, saved like the trainer saves it.

``write_quick_model(root)`` writes the quick temporal RetinaNet (T=5) at 64 px with a stored
``youden`` operating point, so ``predict`` / ``serve`` find a decision threshold without training.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICK_THRESHOLD = 0.0101  # a random quick model's series scores lie close to 0.01 (the prior probability)


def write_quick_model(root: Path, threshold: float = QUICK_THRESHOLD) -> tuple[Path, Path]:
    """A randomly initialised quick temporal RetinaNet (T=5, 64 px) saved like the trainer saves it,
    with a stored youden operating point at ``threshold``; returns ``(config, weights)``."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import perforation_d2
    from perforation_d2.engine import OperatingPoint, SafeDetectionCheckpointer

    root.mkdir(parents=True, exist_ok=True)
    config = root / "retinanet_tconv_T5_64px.yaml"
    config.write_text(
        f'_BASE_: "{REPO / "configs" / "quick" / "retinanet_tconv_T5.yaml"}"\n'
        "INPUT:\n  FRAME_SIZE: 64\n"
        "MODEL:\n  RETINANET:\n    SCORE_THRESH_TEST: 0.0\n"
    )
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    model = build_model(cfg)
    point = OperatingPoint("youden")
    point.state = {"method": "youden", "threshold": threshold, "sensitivity": 1.0, "specificity": 1.0,
                   "dataset": "toy_val", "iteration": 10}
    SafeDetectionCheckpointer(model, save_dir=str(root), operating_point=point).save("model_final")
    return config, root / "model_final.pth"
