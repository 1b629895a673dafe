"""``export``: a trained RetinaNet-family model as two ONNX graphs, checked against PyTorch.

Written as one set into the output folder: ``backbone.onnx``, ``head.onnx`` (see :mod:`.graphs`)
and ``export.json``, which records the config (YAML and fingerprint), the weights' SHA-256, the
stored operating points, the input contract (resize, normalisation, padding, clip rule, tensor
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
    sha256_bytes,
    sha256_of,
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
            # One positional argument per input, or one *args tuple (FusionHead) holding them all.
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
    scale = max(float(w.abs().max()) for w in want) or 1.0
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)) / scale


def _example_frames(num: int, size: int, model) -> torch.Tensor:
    generator = torch.Generator().manual_seed(num * 1000 + size)
    pixels = torch.randint(0, 256, (num, 3, size, size), generator=generator).float()
    return (pixels - model.pixel_mean.cpu()) / model.pixel_std.cpu()


def _clips(features: tuple[torch.Tensor, ...], num_clips: int, clip_len: int) -> tuple[torch.Tensor, ...]:
    """Clips of consecutive frames (frame count >= num_clips + clip_len - 1) per level."""
    return tuple(x.unfold(0, clip_len, 1)[:num_clips].permute(0, 4, 1, 2, 3).contiguous() for x in features)


def export_model(config_file: str, weights: str, out: str, overwrite: bool = False, opts=(),
                 exporter: str = "dynamo") -> dict[str, Any]:
    """Export, check and write; returns the record written as ``export.json``."""
    from ..engine.operating_point import OPERATING_POINTS, stored_threshold
    from ..inference.model import load_model

    if exporter not in EXPORTERS:
        raise DSAInputError(f"--exporter {exporter!r}: valid choices are {', '.join(EXPORTERS)}.")
    ort = require_onnxruntime()
    import onnx

    # Checked before any work: a folder that is not this command's, or files without --overwrite.
    outputs = OutputTransaction(out, "export", overwrite, names=[BACKBONE_FILE, HEAD_FILE, EXPORT_FILE])
    cfg, model, extras = load_model(config_file, weights, "cpu", opts)
    check_exportable(model, config_file)
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
    # Example frames large enough that no level is 1 x 1 (the exporter would fix that size).
    strides = [model.backbone.output_shape()[level].stride for level in model.head_in_features]
    example = max(padded, int(math.ceil(2 * max(strides) / divisibility) * divisibility))
    levels = list(model.head_in_features)
    backbone, head = FrameBackbone(model).eval(), FusionHead(model).eval()
    frame_names, clip_names = ["frames"], [f"clips_{level}" for level in levels]
    out_names = [f"features_{level}" for level in levels]
    head_names = [f"logits_{level}" for level in levels] + [f"deltas_{level}" for level in levels]

    example_frames = _example_frames(2 + clip_len - 1, example, model)
    with torch.no_grad():
        example_clips = _clips(backbone(example_frames), 2, clip_len)
    backbone_graph = _export(backbone, (example_frames,), frame_names, out_names,
                             [{0: "frames", 2: "height", 3: "width"}], exporter)
    head_graph = _export(head, example_clips, clip_names, head_names,
                         [{0: "clips", 3: f"h_{level}", 4: f"w_{level}"} for level in levels], exporter)

    checks = []
    for num, size in ((clip_len + 1, padded), (clip_len + 2, padded + divisibility)):
        frames = _example_frames(num, size, model)
        with torch.no_grad():
            clips = _clips(backbone(frames), num - clip_len + 1, clip_len)
        difference = {
            "backbone": _difference(backbone_graph, backbone, (frames,), frame_names),
            "head": _difference(head_graph, head, clips, clip_names),
        }
        checks.append({"frames": num, "size": size, "relative_difference": difference})
        for graph, value in difference.items():
            if not value <= CHECK_TOLERANCE:
                raise DSAInputError(
                    f"{config_file}: the exported {graph} graph differs from PyTorch by {value:.2e} (relative) on "
                    f"{num} frames of {size} px, more than {CHECK_TOLERANCE:.0e}; nothing was written to {out}. "
                    f"Try --exporter {'torchscript' if exporter == 'dynamo' else 'dynamo'}."
                )

    files = {BACKBONE_FILE: backbone_graph, HEAD_FILE: head_graph}
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
            "clip": "frames clamp(t-k .. t+k), k = (T-1)/2, for centre frame t",
            "backbone": {"inputs": {"frames": ["N", 3, "H", "W"]},
                         "outputs": {name: ["N", "C", "H/stride", "W/stride"] for name in out_names},
                         "strides": dict(zip(levels, strides))},
            "head": {"inputs": {name: ["B", clip_len, "C", "h", "w"] for name in clip_names},
                     "outputs": {name: ["B", "A*K or A*4", "h", "w"] for name in head_names}},
            "decoding": "top-1 per frame (perforation_d2.modeling.top1) then series optimisation",
        },
        "files": {"backbone": {"file": BACKBONE_FILE, "sha256": sha256_bytes(backbone_graph)},
                  "head": {"file": HEAD_FILE, "sha256": sha256_bytes(head_graph)}},
        "check": {"tolerance_relative": CHECK_TOLERANCE, "runs": checks},
    }
    files[EXPORT_FILE] = (json.dumps(record, indent=1) + "\n").encode()
    with outputs:
        for name, content in files.items():
            outputs.write_bytes(name, content)
    return record
