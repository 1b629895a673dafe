"""``export``: a trained model as ONNX graphs, checked against PyTorch.

Written as one set into the output folder: ``backbone.onnx``, ``head.onnx`` (see :mod:`.graphs`),
for Faster / Cascade R-CNN also ``rpn_head.onnx``, ``box_pooler.onnx`` and ``box_head_<s>.onnx``
per stage (see :mod:`.rcnn`), and ``export.json``, which records the config (YAML and
fingerprint), the weights' SHA-256, the stored operating points, the input contract (resize, normalisation, padding, clip rule, tensor
names and shapes), the files' SHA-256 and the measured agreement with PyTorch. The graphs are
exported with ``torch.onnx.export`` (the dynamo exporter by default; ``exporter="torchscript"``
for the legacy one), with dynamic batch and frame size, and run with onnxruntime on two batch
and frame sizes before anything is written: a graph that differs from PyTorch by more than
:data:`CHECK_TOLERANCE` is not written.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.modeling.meta_arch.retinanet import RetinaNet

from ..errors import DSAInputError
from ..io.transaction import OutputTransaction
from .graphs import (
    BACKBONE_FILE,
    EXPORT_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    HEAD_FILE,
    FrameBackbone,
    FusionHead,
    check_exportable,
    config_fingerprint,
    frame_levels,
    fused_levels,
    sha256_bytes,
    sha256_of,
)
from .rcnn import (
    BOX_POOLER_FILE,
    RPN_HEAD_FILE,
    BoxPooler,
    RpnHead,
    StageHead,
    box_head_file,
    graph_names,
    num_stages,
    pooler_rois,
)
from .runtime import require_onnxruntime

__all__ = ["CHECK_TOLERANCE", "EXPORTERS", "export_model"]

EXPORTERS = ("dynamo", "torchscript")
# Largest |ONNX - PyTorch| allowed, relative to the largest |PyTorch| output of the graph (FP32
# graphs differ by operator order only: ~1e-6 relative in our runs).
CHECK_TOLERANCE = 1e-4


def _export(module: torch.nn.Module, inputs: tuple, names: list[str], outputs: list[str], dynamic: list[dict[int, str]],
            exporter: str) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.onnx"
        if exporter == "dynamo":
            dims: dict[str, Any] = {}
            per_input = tuple({axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in d.items()}
                              for d in dynamic)
            # One positional argument per input, or one *args tuple holding them all (FusionHead,
            # RpnHead, BoxPooler).
            shapes = per_input if len(inputs) == 1 else (per_input,)
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=outputs,
                              dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False)
        else:
            torch.onnx.export(module, inputs, str(path), input_names=names, output_names=outputs,
                              dynamic_axes=dict(zip(names, dynamic)), dynamo=False)
        return path.read_bytes()


def _difference(graph: bytes, module: torch.nn.Module, inputs: tuple, names: list[str]) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs, relative to the largest |PyTorch| output."""
    ort = require_onnxruntime()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    got = session.run(None, {name: x.numpy() for name, x in zip(names, inputs)})
    with torch.no_grad():
        want = module(*inputs)
    want = (want,) if isinstance(want, torch.Tensor) else want
    scale = max(float(w.abs().max()) for w in want) or 1.0
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)) / scale


def _example_frames(num: int, size: int, model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(num * 1000 + size)
    pixels = torch.randint(0, 256, (num, 3, size, size), generator=generator).float()
    return (pixels - model.pixel_mean.cpu()) / model.pixel_std.cpu()


def _clips(features: tuple[torch.Tensor, ...], num_clips: int, clip_len: int) -> tuple[torch.Tensor, ...]:
    """Clips of consecutive frames (frame count >= num_clips + clip_len - 1) per level."""
    return tuple(x.unfold(0, clip_len, 1)[:num_clips].permute(0, 4, 1, 2, 3).contiguous() for x in features)


class _Graphs:
    """Modules, tensor names, dynamic axes and example inputs of every graph of one model's export."""

    def __init__(self, model: torch.nn.Module, levels: list[str], fused: list[str], clip_len: int):
        self.model, self.levels, self.fused, self.clip_len = model, levels, fused, clip_len
        self.rcnn = not isinstance(model, RetinaNet)
        clips = [f"clips_{level}" for level in levels]
        self.names = {"backbone": ["frames"], "head": clips}
        self.outputs = {"backbone": [f"features_{level}" for level in levels],
                        "head": ([f"fused_{level}" for level in fused] if self.rcnn else
                                 [f"logits_{level}" for level in fused] + [f"deltas_{level}" for level in fused])}
        self.dynamic = {"backbone": [{0: "frames", 2: "height", 3: "width"}],
                        "head": [{0: "clips", 3: f"h_{level}", 4: f"w_{level}"} for level in levels]}
        if self.rcnn:
            names = graph_names(model)
            rpn_levels = model.proposal_generator.in_features
            self.names.update({"rpn": names["rpn"], "pooler": names["pooler"]})
            self.outputs.update({"rpn": [f"objectness_{level}" for level in rpn_levels]
                                 + [f"anchor_deltas_{level}" for level in rpn_levels], "pooler": ["pooled"]})
            fused_axes = {level: {0: "clips", 2: f"h_{level}", 3: f"w_{level}"} for level in fused}
            self.dynamic.update({
                "rpn": [fused_axes[level] for level in rpn_levels],
                "pooler": [{0: "rois"}] + [fused_axes[level] for level in model.roi_heads.box_in_features],
            })
            for stage in range(num_stages(model)):
                key = f"stage_{stage}"
                self.names[key], self.outputs[key] = names["stage"], ["class_logits", "box_deltas"]
                self.dynamic[key] = [{0: "rois"}]

    def modules(self) -> dict[str, torch.nn.Module]:
        modules = {"backbone": FrameBackbone(self.model), "head": FusionHead(self.model)}
        if self.rcnn:
            modules.update({"rpn": RpnHead(self.model), "pooler": BoxPooler(self.model)})
            modules.update({f"stage_{s}": StageHead(self.model, s) for s in range(num_stages(self.model))})
        return {key: module.eval() for key, module in modules.items()}

    def inputs(self, frames: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each graph's inputs computed by PyTorch from ``frames`` (consecutive, normalised, padded)."""
        modules = self.modules()
        num_clips = len(frames) - self.clip_len + 1
        with torch.no_grad():
            clips = _clips(modules["backbone"](frames), num_clips, self.clip_len)
            inputs = {"backbone": (frames,), "head": clips}
            if not self.rcnn:
                return inputs
            fused = dict(zip(self.fused, modules["head"](*clips)))
            inputs["rpn"] = tuple(fused[level] for level in self.model.proposal_generator.in_features)
            rois = pooler_rois(self.model, fused, tuple(frames.shape[-2:]))
            inputs["pooler"] = (rois, *(fused[level] for level in self.model.roi_heads.box_in_features))
            pooled = modules["pooler"](*inputs["pooler"])
            for stage in range(num_stages(self.model)):
                inputs[f"stage_{stage}"] = (pooled,)
        return inputs

    def contract(self) -> dict[str, Any]:
        """The graphs' tensors for the record's input contract (besides the backbone)."""
        clip_shape = ["B", self.clip_len, "C", "h", "w"]
        contract = {"head": {"inputs": {name: clip_shape for name in self.names["head"]},
                             "outputs": {name: ["B", "C", "h", "w"] if self.rcnn else ["B", "A*K or A*4", "h", "w"]
                                         for name in self.outputs["head"]}}}
        if self.rcnn:
            contract["rpn"] = {"inputs": {name: ["B", "C", "h", "w"] for name in self.names["rpn"]},
                               "outputs": {name: ["B", "A or A*4", "h", "w"] for name in self.outputs["rpn"]}}
            contract["pooler"] = {"inputs": {"rois": ["R", 5], **{name: ["B", "C", "h", "w"]
                                                                  for name in self.names["pooler"][1:]}},
                                  "outputs": {"pooled": ["R", "C", "7", "7"]},
                                  "rois": "proposals of Detectron2's RPN (top-k + NMS in Python), rows "
                                          "(frame index, x0, y0, x1, y1) in input pixels"}
            contract["box_heads"] = {"inputs": {"pooled": ["R", "C", "7", "7"]},
                                     "outputs": {"class_logits": ["R", "K+1"], "box_deltas": ["R", "4 or 4K"]},
                                     "stages": num_stages(self.model)}
        return contract


def export_model(config_file: str, weights: str, out: str, overwrite: bool = False, opts=(),
                 exporter: str = "dynamo") -> dict[str, Any]:
    """Export, check and write; returns the record written as ``export.json``."""
    from ..engine.operating_point import OPERATING_POINTS, stored_threshold
    from ..inference.model import load_model

    if exporter not in EXPORTERS:
        raise DSAInputError(f"--exporter {exporter!r}: valid choices are {', '.join(EXPORTERS)}.")
    ort = require_onnxruntime()
    import onnx

    cfg, model, extras = load_model(config_file, weights, "cpu", opts)
    check_exportable(model, config_file)
    rcnn = not isinstance(model, RetinaNet)
    graph_files = {"backbone": BACKBONE_FILE, "head": HEAD_FILE}
    if rcnn:
        graph_files.update({"rpn": RPN_HEAD_FILE, "pooler": BOX_POOLER_FILE})
        graph_files.update({f"stage_{s}": box_head_file(s) for s in range(num_stages(model))})
    # Checked before exporting: a folder that is not this command's, or files without --overwrite.
    outputs = OutputTransaction(out, "export", overwrite, names=[*graph_files.values(), EXPORT_FILE])
    model = model.float().eval()
    points = {}
    for method in OPERATING_POINTS:
        try:
            threshold = stored_threshold(weights, extras, method)
        except DSAInputError:
            continue
        points[method] = {"threshold": threshold.value, "series_optimization": threshold.series_optimization,
                          "source": Path(threshold.source).name}

    clip_len = int(getattr(model.backbone, "num_frames", 1))
    divisibility = max(int(model.backbone.size_divisibility), 1)
    frame_size = int(cfg.INPUT.FRAME_SIZE)
    padded = int(math.ceil(frame_size / divisibility) * divisibility)
    levels, fused = frame_levels(model), fused_levels(model)
    # Example frames large enough that no level is 1 x 1 (the exporter would fix that size).
    strides = [model.backbone.output_shape()[level].stride for level in fused]
    example = max(padded, int(math.ceil(2 * max(strides) / divisibility) * divisibility))
    graphs = _Graphs(model, levels, fused, clip_len)
    modules = graphs.modules()
    example_inputs = graphs.inputs(_example_frames(2 + clip_len - 1, example, model))
    exported = {key: _export(modules[key], example_inputs[key], graphs.names[key], graphs.outputs[key],
                             graphs.dynamic[key], exporter) for key in graph_files}

    checks = []
    for num, size in ((clip_len + 1, padded), (clip_len + 2, padded + divisibility)):
        inputs = graphs.inputs(_example_frames(num, size, model))
        difference = {key: _difference(exported[key], modules[key], inputs[key], graphs.names[key])
                      for key in graph_files}
        checks.append({"frames": num, "size": size, "relative_difference": difference})
        for graph, value in difference.items():
            if not value <= CHECK_TOLERANCE:
                raise DSAInputError(
                    f"{config_file}: the exported {graph} graph differs from PyTorch by {value:.2e} (relative) on "
                    f"{num} frames of {size} px, more than {CHECK_TOLERANCE:.0e}; nothing was written to {out}. "
                    f"Try --exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}."
                )

    files = {graph_files[key]: graph for key, graph in exported.items()}
    record = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "created_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                         "exporter": exporter},
        "config_file": str(config_file),
        "config_sha256": config_fingerprint(cfg),
        "config": cfg.dump(),
        "weights": {"file": Path(weights).name, "sha256": sha256_of(weights)},
        "operating_points": points,
        "input_contract": {
            "series": "uint8 frames (F, H, W) grey or (F, 3, H, W); grey is replicated to 3 channels",
            "resize": f"bilinear in uint8 to {frame_size} x {frame_size} (ClipAffineTransform.resize, as the "
                      "test-time mapper)",
            "normalise": "(pixels - pixel_mean) / pixel_std per channel, float32",
            "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in model.pixel_std.flatten()],
            "pad": f"zeros after normalising, bottom/right, to a multiple of {divisibility}",
            "frame_size": frame_size,
            "size_divisibility": divisibility,
            "clip_length": clip_len,
            "clip": "frames clamp(t-k .. t+k), k = (T-1)/2, for centre frame t" if not cfg.MODEL.TEMPORAL.CLIP_SPAN_MS
                    else "slot j = -k .. k: the frame nearest in time to t + j * clip_span_ms / (T-1) (ties: the "
                         "earlier), clamped to the series (perforation_d2.data.mapper.clip_indices)",
            "clip_span_ms": float(cfg.MODEL.TEMPORAL.CLIP_SPAN_MS),
            "backbone": {"inputs": {"frames": ["N", 3, "H", "W"]},
                         "outputs": {name: ["N", "C", "H/stride", "W/stride"] for name in graphs.outputs["backbone"]},
                         "strides": dict(zip(fused, strides))},
            **graphs.contract(),
            "decoding": "top-1 per frame (perforation_d2.modeling.top1) then series optimisation",
        },
        "files": {key: {"file": graph_files[key], "sha256": sha256_bytes(graph)} for key, graph in exported.items()},
        "check": {"tolerance_relative": CHECK_TOLERANCE, "runs": checks},
    }
    files[EXPORT_FILE] = (json.dumps(record, indent=1) + "\n").encode()
    with outputs:
        for name, content in files.items():
            outputs.write_bytes(name, content)
    return record
