"""A quick model for command tests: randomly initialised, saved like the trainer saves it.

``write_quick_model(root)`` writes the quick temporal RetinaNet (T=5) at 64 px with a stored
``youden`` operating point, so ``predict`` / ``serve`` find a decision threshold without training.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUICK_THRESHOLD = 0.0101  # a random quick model's series scores lie close to 0.01 (the prior probability)


def write_quick_config(folder: Path, base: str = "retinanet_tconv_T5.yaml") -> Path:
    """A leaf over the quick config ``base`` at 64 px that keeps every frame's top-1 (threshold 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{Path(base).stem}_64px.yaml"
    config.write_text(
        f'_BASE_: "{REPO / "configs" / "quick" / base}"\n'
        "INPUT:\n  FRAME_SIZE: 64\n"
        "MODEL:\n  RETINANET:\n    SCORE_THRESH_TEST: 0.0\n"
    )
    return config


def write_quick_model(
    root: Path, threshold: float | None = QUICK_THRESHOLD, config: Path | None = None
) -> tuple[Path, Path]:
    """A randomly initialised (seed 0) quick temporal RetinaNet (T=5, 64 px) saved like the trainer
    saves it in ``root``, with a stored youden operating point at ``threshold`` (None: no operating
    point); ``config`` reuses a config written earlier. Returns ``(config, weights)``."""
    import torch
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import perforation_d2
    from perforation_d2.engine import OperatingPoint, SafeDetectionCheckpointer

    root.mkdir(parents=True, exist_ok=True)
    config = config or write_quick_config(root)
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpointables = {}
    if threshold is not None:
        point = OperatingPoint("youden")
        point.state = {"method": "youden", "threshold": threshold, "sensitivity": 1.0, "specificity": 1.0,
                       "dataset": "toy_val", "iteration": 10}
        checkpointables["operating_point"] = point
    SafeDetectionCheckpointer(model, save_dir=str(root), **checkpointables).save("model_final")
    return config, root / "model_final.pth"
