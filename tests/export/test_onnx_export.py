"""ONNX export of the quick temporal RetinaNet: the record, the round trip, and refused inputs.

One export (dynamo exporter, ~1 min on a loaded 2-core machine) is shared by the module. Series
through onnxruntime must give the PyTorch path's detections: same frames with a detection, boxes
within 1e-3 px, scores within 1e-5 (the graphs differ from PyTorch by operator order only).
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers.quick_model import QUICK_THRESHOLD, write_quick_model
from helpers.threads import one_thread  # noqa: F401 (autouse: one intra-op thread)

from perforation_d2.cli import main
from perforation_d2.errors import DSAInputError
from perforation_d2.export import OnnxSeriesPredictor, export_model, read_export, require_onnxruntime
from perforation_d2.inference.model import load_model
from perforation_d2.modeling.series_inference import SeriesPredictor

BOX_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config, weights = write_quick_model(root / "model")
    widen_heads(weights)
    record = export_model(str(config), str(weights), str(root / "onnx"))
    return config, weights, root / "onnx", record


def widen_heads(weights) -> None:
    """Head weights drawn wider than the prior-probability init (where every anchor scores ~0.01),
    so that each frame's top detection is well separated from the runner-up."""
    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for name, value in checkpoint["model"].items():
        if name.startswith("head.") and value.is_floating_point():
            checkpoint["model"][name] = torch.randn(value.shape, generator=generator) * 0.05
    torch.save(checkpoint, weights)


def series(num_frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(num_frames, 72, 88), dtype=np.uint8)


def test_the_record_describes_the_export(exported):
    config, weights, folder, record = exported
    assert json.loads((folder / "export.json").read_text()) == record
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "backbone.onnx", "export.json", "head.onnx"]
    assert record["operating_points"]["youden"]["threshold"] == pytest.approx(QUICK_THRESHOLD)
    assert record["weights"]["file"] == "model_final.pth"
    contract = record["input_contract"]
    assert contract["frame_size"] == 64 and contract["clip_length"] == 5
    assert list(contract["backbone"]["strides"].values()) == [8, 16, 32, 64, 128]
    assert "FRAME_SIZE: 64" in record["config"]
    # checked against PyTorch at two batch and frame sizes before writing
    runs = record["check"]["runs"]
    assert {run["size"] for run in runs} == {64, 96} and len({run["frames"] for run in runs}) == 2
    assert all(v <= record["check"]["tolerance_relative"] for run in runs for v in run["relative_difference"].values())


@pytest.mark.parametrize(("num_frames", "batch"), [(7, 4), (3, 2), (1, 1)])
def test_onnxruntime_series_equal_the_pytorch_series(exported, num_frames, batch):
    config, weights, folder, _ = exported
    cfg, model, _ = load_model(str(config), str(weights), "cpu")
    read_export(folder, cfg, str(weights))
    frames = series(num_frames, seed=num_frames)
    torch_path = SeriesPredictor(model, 64, batch_size=batch)(frames)
    onnx_path = OnnxSeriesPredictor(model, folder, 64, batch_size=batch)(frames)
    assert len(onnx_path) == num_frames
    assert sum(len(a) for a in torch_path) > 0
    for a, b in zip(torch_path, onnx_path):
        assert len(a) == len(b) and a.image_size == b.image_size == (72, 88)
        if len(a):
            torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor, atol=BOX_TOLERANCE_PX, rtol=0)
            torch.testing.assert_close(b.scores, a.scores, atol=SCORE_TOLERANCE, rtol=0)


def test_an_onnx_file_not_matching_its_record_is_refused(exported, tmp_path):
    config, weights, folder, _ = exported
    copy = tmp_path / "onnx"
    shutil.copytree(folder, copy)
    with open(copy / "head.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DSAInputError, match=r"head\.onnx: does not match its record in .*export\.json"):
        read_export(copy)


def test_another_config_or_other_weights_are_refused(exported, tmp_path):
    config, weights, folder, _ = exported
    cfg, model, _ = load_model(str(config), str(weights), "cpu", ["MODEL.RETINANET.SCORE_THRESH_TEST", "0.3"])
    with pytest.raises(DSAInputError, match="was exported from a different config"):
        read_export(folder, cfg)
    other = tmp_path / "other.pth"
    other.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(DSAInputError, match="was exported from other weights"):
        read_export(folder, None, str(other))


def test_a_folder_without_a_record_is_one_paragraph(tmp_path):
    with pytest.raises(DSAInputError, match=r"export\.json: export record not found"):
        read_export(tmp_path)


def test_missing_onnxruntime_is_one_paragraph(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import` sees when it is not installed
    with pytest.raises(DSAInputError) as caught:
        require_onnxruntime()
    assert "onnxruntime is not installed" in str(caught.value) and "\n" not in str(caught.value)


def test_models_without_an_export_are_refused_before_any_work(tmp_path):
    """R-CNN with a mask head has no export (Faster / Cascade R-CNN: tests/export/test_rcnn_export.py)."""
    from helpers.quick_model import REPO

    from perforation_d2.engine import SafeDetectionCheckpointer
    from perforation_d2.engine.trainer import build_config

    config = REPO / "configs" / "quick" / "faster_rcnn.yaml"
    import argparse

    from detectron2.modeling import build_model

    opts = ["MODEL.MASK_ON", "True"]
    model = build_model(build_config(argparse.Namespace(config_file=str(config), opts=opts)))
    SafeDetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    with pytest.raises(DSAInputError, match="export supports RetinaNet-family models and Faster / Cascade R-CNN"):
        export_model(str(config), str(tmp_path / "model_final.pth"), str(tmp_path / "onnx"), opts=opts)
    assert not (tmp_path / "onnx").exists()


@pytest.fixture(scope="module")
def legacy_export(tmp_path_factory):
    """The export command with the legacy TorchScript-based exporter (seconds instead of a minute)."""
    root = tmp_path_factory.mktemp("legacy")
    config, weights = write_quick_model(root / "model")
    widen_heads(weights)
    argv = ["export", "--config-file", str(config), "--weights", str(weights), "--out", str(root / "onnx"),
            "--exporter", "torchscript"]
    assert main(argv) == 0
    return config, weights, root / "onnx", argv


def test_export_command_writes_a_checked_set(legacy_export, capsys):
    config, weights, folder, argv = legacy_export
    record = read_export(folder, None, str(weights))
    assert record["created_with"]["exporter"] == "torchscript"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "backbone.onnx", "export.json", "head.onnx"]
    before = (folder / "export.json").read_bytes()
    assert main(argv) == 2  # never replaces an earlier export without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert (folder / "export.json").read_bytes() == before
    assert main([*argv, "--overwrite"]) == 0


def test_predict_with_onnxruntime_gives_the_pytorch_decisions_and_boxes(legacy_export, tmp_path,
                                                                       predict_runtimes_agree):
    config, weights, folder, _ = legacy_export
    predict_runtimes_agree(config, weights, folder, tmp_path)


def test_predict_refuses_an_export_of_another_config(legacy_export, tmp_path, capsys, make_noisy_cohort):
    config, weights, folder, _ = legacy_export
    cohort = make_noisy_cohort(tmp_path / "cohort")
    argv = ["predict", "--config-file", str(config), "--weights", str(weights), "--input", str(cohort),
            "--out", str(tmp_path / "out"), "--runtime", "onnxruntime", "--onnx", str(folder),
            "MODEL.RETINANET.NMS_THRESH_TEST", "0.4"]
    assert main(argv) == 2
    assert "was exported from a different config" in capsys.readouterr().err
    assert not (tmp_path / "out" / "series_scores.json").exists()
