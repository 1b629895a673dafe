"""ONNX export of the quick input-fusion RetinaNet (T=5): the per-frame graph passes the grey frame
through (level "input") and head.onnx runs the backbone on the clip; series agree with PyTorch."""

from __future__ import annotations

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers.quick_model import REPO
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.config import add_perforation_config
from perforation_d2.engine import SafeDetectionCheckpointer
from perforation_d2.export import OnnxSeriesPredictor, export_model
from perforation_d2.inference.model import load_model
from perforation_d2.modeling.series_inference import SeriesPredictor


def test_input_fusion_export_round_trip(tmp_path):
    config = tmp_path / "model.yaml"
    config.write_text(f'_BASE_: "{REPO / "configs" / "quick" / "retinanet_input_T5.yaml"}"\n'
                      "INPUT:\n  FRAME_SIZE: 64\nMODEL:\n  RETINANET:\n    SCORE_THRESH_TEST: 0.0\n")
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    SafeDetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("model_final")
    weights = tmp_path / "model_final.pth"
    record = export_model(str(config), str(weights), str(tmp_path / "onnx"), exporter="torchscript")
    assert list(record["input_contract"]["backbone"]["outputs"]) == ["features_input"]
    _, model, _ = load_model(str(config), str(weights), "cpu")
    frames = np.random.default_rng(1).integers(0, 256, size=(7, 72, 88), dtype=np.uint8)
    torch_path = SeriesPredictor(model, 64, 4)(frames)
    onnx_path = OnnxSeriesPredictor(model, tmp_path / "onnx", 64, 4)(frames)
    assert sum(len(a) for a in torch_path) == len(frames)
    for a, b in zip(torch_path, onnx_path):
        assert len(a) == len(b)
        torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)
