"""ONNX export of the quick temporal Faster / Cascade R-CNN: the graphs, the round trip, predict.

Legacy (TorchScript-based) exporter: seconds per export. Series through onnxruntime must give the
PyTorch path's top-1 detections: same frames with a detection, boxes within 1e-3 px, scores within
1e-5 (the graphs differ from PyTorch by operator order only), on random weights and on weights
after a few SGD steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from helpers.quick_model import REPO
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.cli import main
from perforation_d2.config import add_perforation_config
from perforation_d2.engine import OperatingPoint, SafeDetectionCheckpointer
from perforation_d2.errors import DSAInputError
from perforation_d2.export import OnnxSeriesPredictor, export_model, read_export
from perforation_d2.export.graphs import check_exportable
from perforation_d2.inference.model import load_model
from perforation_d2.modeling.series_inference import SeriesPredictor

BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5


def write_rcnn_model(root, leaf: str, train_steps: int = 0):
    """A quick temporal (T=5, 64 px) R-CNN saved like the trainer saves it, with a youden point;
    ``train_steps`` SGD steps on random clips with one box each first."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "model.yaml"
    config.write_text(
        f'_BASE_: "{REPO / "configs" / "quick" / leaf}"\nINPUT:\n  FRAME_SIZE: 64\n'
        "MODEL:\n  TEMPORAL:\n    NUM_FRAMES: 5\n    MODULE: TemporalConv\n  ROI_HEADS:\n    SCORE_THRESH_TEST: 0.0\n"
    )
    cfg = get_cfg()
    add_perforation_config(cfg)
    cfg.merge_from_file(str(config))
    torch.manual_seed(0)
    model = build_model(cfg)
    if train_steps:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        generator = torch.Generator().manual_seed(1)
        model.train()
        with EventStorage():  # the R-CNN heads log their training statistics there
            for _ in range(train_steps):
                inputs = []
                for _ in range(2):
                    instances = Instances((64, 64), gt_boxes=Boxes(torch.tensor([[20.0, 24.0, 34.0, 40.0]])),
                                          gt_classes=torch.zeros(1, dtype=torch.int64))
                    image = torch.randint(0, 256, (5, 3, 64, 64), generator=generator, dtype=torch.uint8)
                    inputs.append({"image": image, "instances": instances, "height": 64, "width": 64})
                loss = sum(model(inputs).values())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
    point = OperatingPoint("youden")
    point.state = {"method": "youden", "threshold": 0.5, "sensitivity": 1.0, "specificity": 1.0,
                   "dataset": "toy_val", "iteration": train_steps}
    SafeDetectionCheckpointer(model, save_dir=str(root), operating_point=point).save("model_final")
    return config, root / "model_final.pth"


def assert_same_series(config, weights, folder, frames, batch: int = 4):
    cfg, model, _ = load_model(str(config), str(weights), "cpu")
    read_export(folder, cfg, str(weights))
    torch_path = SeriesPredictor(model, 64, batch_size=batch)(frames)
    onnx_path = OnnxSeriesPredictor(model, folder, 64, batch_size=batch)(frames)
    assert len(onnx_path) == len(frames) and sum(len(a) for a in torch_path) > 0
    for a, b in zip(torch_path, onnx_path):
        assert len(a) == len(b)
        if len(a):
            torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=BOX_TOLERANCE_PX, rtol=0)
            torch.testing.assert_close(b.scores, a.scores, atol=SCORE_TOLERANCE, rtol=0)
            assert torch.equal(a.pred_classes, b.pred_classes)


@pytest.mark.parametrize(("leaf", "stages", "train_steps"),
                         [("faster_rcnn.yaml", 1, 0), ("cascade_rcnn.yaml", 3, 0), ("faster_rcnn.yaml", 1, 3)])
def test_rcnn_export_round_trip(tmp_path, leaf, stages, train_steps):
    config, weights = write_rcnn_model(tmp_path / "model", leaf, train_steps)
    record = export_model(str(config), str(weights), str(tmp_path / "onnx"), exporter="torchscript")
    graphs = ["backbone.onnx", "box_pooler.onnx", "head.onnx", "rpn_head.onnx"]
    graphs += [f"box_head_{s}.onnx" for s in range(stages)]
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir() if not p.name.startswith(".")) == sorted(
        [*graphs, "export.json"])
    assert record["input_contract"]["box_heads"]["stages"] == stages
    assert all(v <= record["check"]["tolerance_relative"]
               for run in record["check"]["runs"] for v in run["relative_difference"].values())
    rng = np.random.default_rng(train_steps)
    for num_frames, batch in ((7, 4), (2, 1)):
        assert_same_series(config, weights, tmp_path / "onnx",
                           rng.integers(0, 256, size=(num_frames, 72, 88), dtype=np.uint8), batch)


def test_a_changed_rcnn_graph_is_refused(tmp_path):
    config, weights = write_rcnn_model(tmp_path / "model", "faster_rcnn.yaml")
    export_model(str(config), str(weights), str(tmp_path / "onnx"), exporter="torchscript")
    with open(tmp_path / "onnx" / "box_head_0.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DSAInputError, match=r"box_head_0\.onnx: does not match its record"):
        read_export(tmp_path / "onnx")


def test_other_models_are_refused_in_one_paragraph():
    with pytest.raises(DSAInputError, match="export supports RetinaNet-family models and Faster / Cascade R-CNN"):
        check_exportable(torch.nn.Linear(1, 1), "some.yaml")


def test_predict_with_onnxruntime_gives_the_pytorch_decisions_for_rcnn(tmp_path, predict_runtimes_agree):
    config, weights = write_rcnn_model(tmp_path / "model", "faster_rcnn.yaml", train_steps=3)
    assert main(["export", "--config-file", str(config), "--weights", str(weights), "--out", str(tmp_path / "x"),
                 "--exporter", "torchscript"]) == 0
    predict_runtimes_agree(config, weights, tmp_path / "x", tmp_path)
