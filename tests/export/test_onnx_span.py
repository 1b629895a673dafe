"""The onnxruntime series path with clips spanning a fixed duration (MODEL.TEMPORAL.CLIP_SPAN_MS).

``predict --runtime onnxruntime`` builds its predictor from the config the export recorded; with a
clip span it must pick each clip's frames from the series' frame time exactly as the PyTorch path
does (the graphs take gathered clips; which frames they hold is the series loop's business).
One export of the quick temporal RetinaNet at 64 px with a 4 s span.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.quick_model import write_quick_model
from helpers.series_models import widen_heads
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.errors import DSAInputError
from perforation_d2.export import export_model, onnx_series_predictor
from perforation_d2.inference.model import load_model
from perforation_d2.modeling.series_inference import SeriesPredictor

SPAN = ["MODEL.TEMPORAL.CLIP_SPAN_MS", "4000.0"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_span")
    config, weights = write_quick_model(root / "model")
    # Head weights wider than the prior-probability init, so every frame's top detection is clear.
    _, model, _ = load_model(str(config), str(weights), "cpu")
    torch.manual_seed(0)
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    checkpoint["model"] = widen_heads(model).state_dict()
    torch.save(checkpoint, weights)
    record = export_model(str(config), str(weights), str(root / "onnx"), opts=SPAN)
    return config, weights, root / "onnx", record


def test_span_series_through_onnxruntime_equal_pytorch(exported):
    config, weights, folder, record = exported
    assert record["input_contract"]["clip_span_ms"] == 4000.0
    cfg, model, _ = load_model(str(config), str(weights), "cpu", SPAN)
    onnx = onnx_series_predictor(folder, cfg, model, str(weights), batch_size=3)
    assert onnx.clip_span_ms == 4000.0
    frames = np.random.default_rng(5).integers(0, 256, size=(14, 72, 88), dtype=np.uint8)
    torch_path = SeriesPredictor.from_config(model, cfg, batch_size=3)(frames, 250.0)
    onnx_path = onnx(frames, 250.0)
    assert onnx.backbone_frames == 14
    assert sum(len(a) for a in torch_path) > 0
    for a, b in zip(torch_path, onnx_path, strict=True):
        assert len(a) == len(b)
        if len(a):
            torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=1e-3, rtol=0)
            torch.testing.assert_close(b.scores, a.scores, atol=1e-5, rtol=0)
    with pytest.raises(DSAInputError, match=r"^series s1: .*MODEL\.TEMPORAL\.CLIP_SPAN_MS"):
        onnx(frames, None, "series s1")
