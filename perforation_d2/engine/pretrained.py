"""ImageNet starts: a classification ResNet checkpoint as ``MODEL.WEIGHTS``, converted on load.

Researchers have ImageNet weights in one of three layouts; each is renamed to the model's
Detectron2 ResNet (``...bottom_up.stem.conv1.weight``, ``...bottom_up.res2.0.conv1.norm.weight``)
and must then match it exactly, or loading stops before training with one paragraph:

* ``torchvision``: a ResNet-18/34/50/101 ``state_dict`` as ``torch.save(model.state_dict())``
  writes it (``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``, ``fc.weight``);
* ``caffe2``: Detectron2's MSRA / FAIR ImageNet ``.pkl`` files (``R-50.pkl``, ``R-50-GN.pkl``:
  ``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``), read by the restricted unpickler;
* ``detectron2``: backbone weights already in Detectron2's names (what Detectron2's
  ``convert-torchvision-to-d2.py`` writes).

The classifier (``fc``) is dropped. The checkpoint's settings are not in the file, so the config
must supply them (``configs/pretrained/``): torchvision has the stride in the 3x3 convolution
(``STRIDE_IN_1X1 False``), RGB ImageNet mean/std; MSRA has it in the 1x1 (``STRIDE_IN_1X1
True``), BGR means with unit std; both have BatchNorm statistics (``NORM FrozenBN``); FAIR's
``R-50-GN.pkl`` needs ``NORM GN``. MSRA files fold BatchNorm into an affine layer and carry no
running statistics, so those (and only those) may be absent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names
from detectron2.modeling.backbone import ResNet
from torch import nn

from ..errors import DSAInputError

__all__ = ["SUPPORTED_FORMATS", "convert_imagenet_checkpoint", "imagenet_format", "to_detectron2_names"]

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    "a torchvision ResNet state_dict (torch.save(torchvision.models.resnet50().state_dict()), keys conv1.weight, "
    "layer1.0.conv1.weight, ...; configs/pretrained/*_torchvision.yaml)",
    "Detectron2's MSRA or FAIR ImageNet .pkl (R-50.pkl, R-101.pkl, R-50-GN.pkl; keys conv1_w, res2_0_branch2a_w, ...; "
    "configs/pretrained/*_msra.yaml)",
    "ResNet weights in Detectron2's names (stem.conv1.weight, res2.0.conv1.weight, ...)",
    "a perforation_d2 or Detectron2 detection checkpoint (model_final.pth), loaded as it is",
)
_BACKBONE_KEY = re.compile(r"^(stem|res[2-5])\.")
_CLASSIFIER_KEY = re.compile(r"^(fc|fc1000|linear|pred)\.")
_SHOWN = 8


def imagenet_format(checkpoint: Mapping[str, Any]) -> str | None:
    """The ImageNet layout of a loaded checkpoint ("torchvision", "caffe2", "detectron2"), or None.

    None for everything else (detection checkpoints, our own training checkpoints), which load as
    before. A layout is recognised by its stem and first-stage names; the rest must then match.
    """
    weights = checkpoint.get("model")
    if not isinstance(weights, Mapping) or not weights:
        return None
    keys = set(weights)
    if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
        return "torchvision"
    if "conv1_w" in keys and any(k.startswith("res2_") for k in keys):
        converted = convert_basic_c2_names(sorted(keys))
        # A Caffe2 *detection* model (FPN, RPN, heads) is left to Detectron2's matching.
        if all(_BACKBONE_KEY.match(k) or _CLASSIFIER_KEY.match(k) for k in converted):
            return "caffe2"
        return None
    if "stem.conv1.weight" in keys and all(_BACKBONE_KEY.match(k) or _CLASSIFIER_KEY.match(k) for k in keys):
        return "detectron2"
    return None


def _torchvision_name(key: str) -> str:
    # As Detectron2's tools/convert-torchvision-to-d2.py renames them.
    if "layer" not in key:
        key = "stem." + key
    for stage in (1, 2, 3, 4):
        key = key.replace(f"layer{stage}.", f"res{stage + 1}.")
    for index in (1, 2, 3):
        key = key.replace(f"bn{index}.", f"conv{index}.norm.")
    return key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def to_detectron2_names(weights: Mapping[str, Any], layout: str) -> dict[str, torch.Tensor]:
    """``weights`` of ``layout`` renamed to Detectron2's ResNet names, classifier and counters dropped."""
    if layout == "torchvision":
        renamed = {_torchvision_name(k): v for k, v in weights.items() if not _CLASSIFIER_KEY.match(k)}
    elif layout == "caffe2":
        keys = sorted(weights)
        renamed = dict(zip(convert_basic_c2_names(keys), (weights[k] for k in keys)))
    else:
        renamed = dict(weights)
    out = {}
    for key, value in renamed.items():
        if _CLASSIFIER_KEY.match(key) or key.endswith("num_batches_tracked"):
            continue
        out[key] = torch.as_tensor(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    return out


def _bottom_up(model: nn.Module) -> tuple[str, ResNet]:
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, ResNet)]
    if len(found) != 1:
        raise DSAInputError(
            f"MODEL.WEIGHTS: an ImageNet checkpoint initialises a ResNet backbone, but this model has "
            f"{len(found)} ResNet modules; use a ResNet-FPN config (MODEL.RESNETS), e.g. configs/pretrained/."
        )
    return found[0][0] + ".", found[0][1]


def convert_imagenet_checkpoint(checkpoint: dict[str, Any], model: nn.Module, source: str) -> dict[str, Any]:
    """``checkpoint`` ready for Detectron2's loader: an ImageNet layout renamed onto ``model``'s ResNet.

    Anything that is not an ImageNet layout is returned unchanged. For an ImageNet layout, every
    checkpoint weight must find a ResNet weight of the same shape and every ResNet weight must be
    given (MSRA's absent BatchNorm statistics excepted); otherwise a :class:`DSAInputError` names
    ``source``, the first unmatched keys and the supported formats.
    """
    layout = imagenet_format(checkpoint)
    if layout is None:
        return checkpoint
    prefix, resnet = _bottom_up(model)
    weights = to_detectron2_names(checkpoint["model"], layout)
    expected = {k: v for k, v in resnet.state_dict().items() if not k.endswith("num_batches_tracked")}
    centre = next((m.input_centre_channel for m in model.modules() if hasattr(m, "input_centre_channel")), None)
    weights = _inflate_stem(weights, expected, centre)
    unexpected = sorted(k for k in weights if k not in expected)
    shapes = sorted(f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k].shape))
    optional = ("running_mean", "running_var") if layout == "caffe2" else ()
    missing = sorted(k for k in expected if k not in weights and not k.endswith(optional))
    if unexpected or shapes or missing:
        raise DSAInputError(_mismatch_message(source, layout, unexpected, shapes, missing))
    logger.info(f"{source}: {layout} ImageNet weights, {len(weights)} tensors loaded into {prefix.rstrip('.')} "
                "(every backbone key matched; the FPN and the head start from their initialisation).")
    converted = {prefix + k: v for k, v in weights.items()}
    if layout == "caffe2":
        # MSRA's folded BatchNorm: FrozenBatchNorm2d's own defaults (mean 0, var 1 - eps) apply.
        converted.update({prefix + k: v for k, v in expected.items() if k not in weights})
    return {**{k: v for k, v in checkpoint.items() if k != "matching_heuristics"}, "model": converted,
            "__author__": f"ImageNet ({layout})"}


_STEM = "stem.conv1.weight"


def _inflate_stem(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  centre: int | None) -> dict[str, torch.Tensor]:
    """An RGB stem onto an input-fusion stem (``MODEL.TEMPORAL.FUSION "input"``) whose channel
    ``centre`` is the clip's centre frame (the other channels: the clip's other frames and its
    time-course maps, ``MODEL.TEMPORAL.INPUT_MAPS``).

    The grey frame is replicated into R, G and B for a single-frame model, so the RGB kernels
    summed act on it exactly as the three copies did (up to the per-channel normalisation, which
    differs by < 3% between ImageNet's channels). That kernel goes to the centre slot and the
    other channels start at zero: the model starts as the pretrained single-frame network and learns
    the time course from there, rather than from a stem that averages growth away.
    """
    stem, target = weights.get(_STEM), expected.get(_STEM)
    if centre is None or stem is None or target is None or stem.dim() != 4 or target.dim() != 4:
        return weights  # not input fusion, or no raw centre frame: the shape check reports a mismatch
    slots = target.shape[1]
    if stem.shape[1] != 3 or stem.shape[0] != target.shape[0] or not 0 <= centre < slots:
        return weights  # not an RGB -> input-fusion inflation; the shape check reports it
    inflated = torch.zeros_like(target)
    inflated[:, centre] = stem.sum(dim=1)
    logger.info(f"{_STEM}: the RGB stem summed onto channel {centre} (the centre frame) of {slots} "
                "input-fusion channels (others start at 0).")
    return {**weights, _STEM: inflated}


def _mismatch_message(source: str, layout: str, unexpected: list[str], shapes: list[str], missing: list[str]) -> str:
    parts = []
    for keys, what in ((unexpected, "checkpoint keys have no place in the model's ResNet"),
                       (shapes, "keys have another shape in the model"),
                       (missing, "ResNet keys of the model are not in the checkpoint")):
        if keys:
            more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {what} ({', '.join(keys[:_SHOWN])}{more})")
    hint = ""
    if any("running_" in k for k in unexpected):
        hint = " The checkpoint has BatchNorm statistics: use MODEL.RESNETS.NORM FrozenBN (or BN)."
    elif any(".norm." in k for k in missing) and layout != "caffe2":
        hint = " The model's norm layers expect statistics the checkpoint lacks (GroupNorm weights?)."
    return (
        f"{source}: read as {layout} ImageNet weights, but they do not fit this model's ResNet: "
        + "; ".join(parts) + f".{hint} Check MODEL.RESNETS.DEPTH, NORM, STRIDE_IN_1X1 and RES2_OUT_CHANNELS "
        "against the checkpoint (configs/pretrained/ has a config per checkpoint). Supported formats: "
        + "; ".join(SUPPORTED_FORMATS) + ". Nothing was trained."
    )
