"""Checkpoints that cannot run code when loaded, and that a kill cannot leave half-written.

A PyTorch ``.pth`` file and Detectron2's ``.pkl`` model-zoo files are pickles: unpickling an
untrusted one can call any Python function (``__reduce__`` -> ``os.system``). Weights downloaded
from elsewhere must therefore never reach plain :func:`pickle.load` or ``torch.load`` with
``weights_only=False``. :class:`SafeDetectionCheckpointer` is Detectron2's
:class:`~detectron2.checkpoint.DetectionCheckpointer` with only the loading and saving replaced:

- ``.pth`` / ``.pyth`` files load with ``torch.load(weights_only=True)`` (tensors, numbers,
  strings and plain containers only);
- ``.pkl`` files load through :class:`RestrictedUnpickler`, which resolves only numpy arrays,
  dtypes and scalars, ``OrderedDict``, ``set``/``frozenset``/``complex`` and latin-1 bytes;
- anything else is refused with a :class:`~perforation_d2.errors.DSAInputError` naming the file
  and the forbidden global, before that global is ever called.

Our own training checkpoints (model, optimizer, LR-scheduler hook state, iteration, operating
point) contain only tensors and primitive containers, so they need no extra safe globals.

Saving writes to a temporary file and renames it into place (``last_checkpoint`` too), so a
training killed while saving leaves the previous checkpoint intact and ``last_checkpoint``
pointing to a complete file, which ``--resume`` can trust.
"""

from __future__ import annotations

import codecs
import collections
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

# numpy < 2 pickles arrays as ``numpy.core.multiarray``, numpy >= 2 as ``numpy._core.multiarray``;
# both names resolve to this module (numpy 1.26 ships the ``_core`` alias).
from numpy._core import multiarray as _multiarray

from ..errors import DSAInputError
from ..io.atomic import atomic_open
from .pretrained import convert_imagenet_checkpoint


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it, restricted to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(obj, "latin1")


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
}
# Python 2 pickles (Caffe2 / Detectron1 model zoo) name these modules differently.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """The pickle names a global that :class:`RestrictedUnpickler` does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_SAFE_GLOBALS`` and refuses all others."""

    def find_class(self, module: str, name: str) -> Any:
        module = _PY2_MODULES.get(module, module)
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"global '{module}.{name}' is not allowed") from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError("persistent ids are not allowed")


def restricted_pickle_load(path: str) -> Any:
    """Unpickle ``path`` (latin-1 for Python 2 pickles) allowing only data, never code."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(handle, encoding="latin1").load()


def _unreadable(path: str, kind: str, err: Exception) -> DSAInputError:
    text = str(err).strip()
    return DSAInputError(
        f"{path}: not a readable {kind} checkpoint (truncated, corrupt or another format): "
        f"{text.splitlines()[0] if text else type(err).__name__}."
    )


def _refusal(path: str, err: Exception) -> DSAInputError:
    detail = str(err).strip().splitlines()
    reason = next((line.strip() for line in detail if "global" in line.lower()), detail[0] if detail else "")
    reason = reason.rstrip(".")
    return DSAInputError(
        f"{path}: refused to load this checkpoint because it is not plain weights: its pickle "
        f"references Python objects that could run code when loaded ({reason}). Checkpoints are "
        "loaded with torch.load(weights_only=True) or, for .pkl files, an unpickler restricted to "
        "numpy arrays and plain containers. If you trust the file, load it yourself and re-save "
        "only its state_dict with torch.save."
    )


def safe_torch_load(path: str) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch raises this both for refused globals ("Weights only load failed ... GLOBAL ...")
        # and for malformed pickle data.
        if "global" in str(err).lower():
            raise _refusal(path, err) from None
        raise _unreadable(path, "PyTorch", err) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, IndexError, KeyError, struct.error) as err:
        # What torch's reader raises on a truncated or garbled file, by format and place of the cut.
        raise _unreadable(path, "PyTorch", err) from None


def safe_pickle_load(path: str) -> Any:
    """Detectron2 ``.pkl`` weights through :class:`RestrictedUnpickler`, with clear errors."""
    try:
        return restricted_pickle_load(path)
    except ForbiddenGlobalError as err:
        raise _refusal(path, err) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            struct.error) as err:
        raise _unreadable(path, "pickle", err) from None


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer with safe loading and atomic saving (see the module doc)."""

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # Detectron2 allows URLs and a "?matching_heuristics=True" query after the file name.
        if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
            raise DSAInputError(f"{path}: checkpoint file not found (MODEL.WEIGHTS or --weights).")
        self._loading_path = path  # named by convert_imagenet_checkpoint's messages
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        # An ImageNet classification checkpoint is renamed onto the ResNet first (engine/pretrained.py).
        checkpoint = convert_imagenet_checkpoint(checkpoint, self.model, getattr(self, "_loading_path", "MODEL.WEIGHTS"))
        # Kept so that load_exact can tell what did not match (fvcore only logs it).
        self.last_incompatible = super()._load_model(checkpoint)
        return self.last_incompatible

    def load_exact(self, path: str, config_file: str) -> dict[str, Any]:
        """Load the model weights of ``path`` (no other checkpointables); they must match the model exactly.

        A missing, unexpected or differently shaped parameter is a :class:`DSAInputError` naming
        ``config_file``: a checkpoint of another architecture or clip length would otherwise run
        half-random. Returns the checkpoint's other entries (e.g. the stored operating point).
        """
        extras = self.load(path, checkpointables=[])
        incompatible = self.last_incompatible
        problems = []
        if incompatible.incorrect_shapes:
            shown = ", ".join(f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in incompatible.incorrect_shapes[:3])
            problems.append(f"{len(incompatible.incorrect_shapes)} parameter(s) of another shape ({shown})")
        for keys, what in ((incompatible.missing_keys, "missing"), (incompatible.unexpected_keys, "unexpected")):
            if keys:
                problems.append(f"{len(keys)} {what} parameter(s) ({', '.join(keys[:3])})")
        if problems:
            raise DSAInputError(
                f"{path}: the weights do not match the model of {config_file}: " + "; ".join(problems)
                + ". Use the config (and KEY VALUE overrides) the model was trained with."
            )
        return extras

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = safe_pickle_load(filename)
            if not isinstance(data, dict):
                raise DSAInputError(f"{filename}: a .pkl checkpoint must hold a dict, found {type(data).__name__}.")
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            # Caffe2 / Detectron1 model zoo: detection models keep their weights under "blobs".
            blobs = data.get("blobs", data)
            blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = safe_torch_load(filename)
            if not isinstance(data, dict) or "model_state" not in data:
                raise DSAInputError(f"{filename}: a .pyth (pycls) checkpoint must contain 'model_state'.")
            model_state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": model_state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> dict[str, Any]:
        data = safe_torch_load(f)
        if not isinstance(data, dict):
            raise DSAInputError(f"{f}: a checkpoint must hold a dict of weights, found {type(data).__name__}.")
        return data

    def save(self, name: str, **kwargs: Any) -> None:
        """Like fvcore's ``save``, but write-then-rename so a kill never leaves a partial file."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb", overwrite=True) as handle:
            torch.save(data, handle)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "wb", overwrite=True) as handle:
            handle.write(last_filename_basename.encode("utf-8"))


class LossNormalizerStates:
    """The EMA loss normalizers of Detectron2's dense detectors, as a checkpointable.

    RetinaNet divides its losses by an exponential moving average of the number of positive
    anchors (``DenseDetector._ema_update("loss_normalizer", ...)``), kept as a plain attribute,
    not a buffer: Detectron2 does not checkpoint it, so a resumed RetinaNet restarts it from 100
    and its losses and updates differ from an uninterrupted run's. Saving it with the trainer
    state makes ``--resume`` continue exactly.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def _normalizers(self) -> dict[str, tuple[torch.nn.Module, str]]:
        found = {}
        for name, module in self.model.named_modules():
            for attr, value in vars(module).items():
                if attr.startswith("loss_normalizer") and isinstance(value, float):
                    found[f"{name}:{attr}"] = (module, attr)
        return found

    def state_dict(self) -> dict[str, float]:
        return {key: float(getattr(module, attr)) for key, (module, attr) in self._normalizers().items()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        modules = dict(self.model.named_modules())
        for key, value in state.items():
            name, attr = key.rsplit(":", 1)
            if name in modules:
                setattr(modules[name], attr, float(value))
