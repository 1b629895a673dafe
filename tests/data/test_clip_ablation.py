"""Clip ablations (time-use diagnostic): what each does to a clip, and that single frames are immune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from helpers.cohorts import frame_background, make_cfg, make_toy_cohort
from helpers.threads import one_thread  # noqa: F401 (autouse fixture)

import perforation_d2
from perforation_d2.data.clip_ablation import (
    CLIP_ABLATIONS,
    AblatedClipMapper,
    ablate_clip,
    ablate_clip_batch,
    clip_slot_order,
)
from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.mapper import DSAClipMapper, clip_indices
from perforation_d2.data.register import cohort_dataset_dicts, register_dsa_cohort
from perforation_d2.engine import Trainer
from perforation_d2.engine.time_use import TIME_USE_FILE, time_use_diagnostic
from perforation_d2.errors import DSAInputError

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "quick"


def test_slot_orders():
    assert clip_slot_order("none", 5) == [0, 1, 2, 3, 4]
    assert clip_slot_order("centre", 5) == [2, 2, 2, 2, 2]
    assert clip_slot_order("reverse", 5) == [4, 3, 2, 1, 0]
    assert clip_slot_order("shuffle", 3, 7) == [2, 1, 0]  # the only other order of two context slots
    for mode in CLIP_ABLATIONS:
        assert clip_slot_order(mode, 1, 3) == [0]
    shuffles = set()
    for frame in range(20):
        order = clip_slot_order("shuffle", 9, frame)
        assert sorted(order) == list(range(9)) and order[4] == 4 and order != list(range(9))
        assert order == clip_slot_order("shuffle", 9, frame)  # seeded by the frame: reproducible
        shuffles.add(tuple(order))
    assert len(shuffles) > 10  # frames get different orders
    with pytest.raises(DSAInputError, match="CLIP_ABLATION = 'backwards'.*none, centre, reverse, shuffle"):
        clip_slot_order("backwards", 5)


def test_batch_ablation_equals_per_clip_ablation():
    features = {"p3": torch.randn(4, 5, 2, 3, 3), "p4": torch.randn(4, 5, 2, 2, 2)}
    for mode in CLIP_ABLATIONS:
        batch = ablate_clip_batch(features, mode, range(10, 14))
        for level, x in features.items():
            for b in range(4):
                assert torch.equal(batch[level][b], ablate_clip(x[b], mode, 10 + b))


def test_mapped_clips_are_ablated_as_stated(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=2, frames=[7, 2])
    dicts = cohort_dataset_dicts(load_cohort(json_file), json_file.parent)
    mapper = DSAClipMapper(make_cfg(5), is_train=False)
    for d in dicts:
        normal = [frame_background(i) for i in clip_indices(d["frame_id"], d["num_frames"], 5)]
        centre = frame_background(d["frame_id"])
        context = [v for slot, v in enumerate(normal) if slot != 2]
        plain = mapper(d)
        for mode, expected in (("none", normal), ("centre", [centre] * 5), ("reverse", normal[::-1])):
            out = AblatedClipMapper(mapper, mode)(d)
            assert out["image"][:, 0, 0, 0].tolist() == expected, mode
            assert out["instances"].gt_boxes.tensor.tolist() == plain["instances"].gt_boxes.tensor.tolist()
        shuffled = AblatedClipMapper(mapper, "shuffle")(d)["image"][:, 0, 0, 0].tolist()
        assert shuffled[2] == centre and sorted(shuffled[:2] + shuffled[3:]) == sorted(context)
    # A positive frame keeps its box (the centre never moves) and its square pixels.
    positive = next(d for d in dicts if d["annotations"])
    for mode in CLIP_ABLATIONS:
        out = AblatedClipMapper(mapper, mode)(positive)
        assert torch.equal(out["image"][2], mapper(positive)["image"][2])


def _quick_cfg(name: str, dataset: str, out: Path, *opts: str):
    cfg = get_cfg()
    perforation_d2.add_perforation_config(cfg)
    cfg.merge_from_file(str(CONFIGS / name))
    cfg.merge_from_list(["INPUT.FRAME_SIZE", "32", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
                         "DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR", str(out), *opts])
    return cfg


def _random_model(cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("head."):
                param.normal_(0.0, 0.05)
            if "temporal" in name and name.endswith("weight"):
                param.normal_(0.0, 0.1)  # a kernel that weighs the frames unequally
    return model


def _predictions(folder: Path) -> list[tuple[int, float]]:
    return [(p["image_id"], p["score"]) for p in json.loads((folder / "predictions.json").read_text())]


def test_single_frame_model_is_unchanged_and_temporal_model_changes(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=4, frames=[6, 4, 5, 3], size=48)
    register_dsa_cohort("clip_ablation_toy", json_file)
    outputs = {}
    for name in ("retinanet.yaml", "retinanet_tconv_T5.yaml"):
        cfg = _quick_cfg(name, "clip_ablation_toy", tmp_path / name)
        model = _random_model(cfg)
        summary = time_use_diagnostic(Trainer, cfg, model)
        assert json.loads((tmp_path / name / TIME_USE_FILE).read_text()) == summary
        outputs[name] = summary
        normal = _predictions(tmp_path / name / "inference" / "clip_ablation_toy" / "clip_none")
        assert len(normal) > 0
        if name == "retinanet.yaml":
            assert list(summary["ablations"]) == ["none"]  # nothing to ablate in a single frame
            # Every ablation through the same (per-clip) path as the ablated runs: equal to the bit.
            per_clip = {}
            for mode in CLIP_ABLATIONS:
                cfg.defrost()
                cfg.TEST.DSA.CLIP_ABLATION = mode
                cfg.TEST.DSA.CACHED_SERIES_INFERENCE = False
                cfg.OUTPUT_DIR = str(tmp_path / f"single_{mode}")
                Trainer.test(cfg, model)
                per_clip[mode] = _predictions(tmp_path / f"single_{mode}" / "inference" / "clip_ablation_toy")
                assert per_clip[mode] == per_clip["none"]
            assert [s for _, s in per_clip["none"]] == pytest.approx([s for _, s in normal], abs=1e-4)
        else:
            assert list(summary["ablations"]) == list(CLIP_ABLATIONS)
            for mode in CLIP_ABLATIONS[1:]:
                ablated = _predictions(tmp_path / name / "inference" / "clip_ablation_toy" / f"clip_{mode}")
                # (random heads predict some boxes off the frame, which are dropped: compare by frame)
                common = dict(normal).keys() & dict(ablated).keys()
                assert any(abs(dict(ablated)[i] - dict(normal)[i]) > 1e-4 for i in common), mode
            assert set(summary["AUC_drop"]) == {"centre", "reverse", "shuffle"}


def test_cached_and_per_clip_inference_ablate_alike(tmp_path):
    json_file = make_toy_cohort(tmp_path / "c", num_patients=3, frames=[7, 3, 5], size=48)
    register_dsa_cohort("clip_ablation_paths_toy", json_file)
    base = _quick_cfg("retinanet_tconv_T5.yaml", "clip_ablation_paths_toy", tmp_path)
    model = _random_model(base)
    for mode in CLIP_ABLATIONS[1:]:
        scores = {}
        for cached in (True, False):
            cfg = base.clone()
            cfg.TEST.DSA.CLIP_ABLATION = mode
            cfg.TEST.DSA.CACHED_SERIES_INFERENCE = cached
            cfg.OUTPUT_DIR = str(tmp_path / f"{mode}_{cached}")
            Trainer.test(cfg, model)
            scores[cached] = dict(_predictions(tmp_path / f"{mode}_{cached}" / "inference" / "clip_ablation_paths_toy"))
        assert scores[True].keys() == scores[False].keys() and scores[True]
        for image_id, score in scores[False].items():
            assert scores[True][image_id] == pytest.approx(score, abs=1e-4), (mode, image_id)
