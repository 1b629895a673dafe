"""Arithmetic precision of series inference: ``TEST.DSA.PRECISION`` fp32 | tf32 | bf16 | fp16.

- ``fp32``: strict FP32, TF32 off for CUDA matmuls and cuDNN convolutions (the default): the cached
  and the per-clip path then agree to FP32 rounding (see :mod:`.series_inference`).
- ``tf32``: PyTorch may use TF32 tensor cores on CUDA (10-bit mantissa inputs, FP32 accumulation).
  PyTorch uses TF32 only on CUDA, so on CPU this computes what ``fp32`` does.
- ``bf16`` / ``fp16``: ``torch.autocast`` to that type on the model's device; box decoding stays in
  FP32 (:mod:`.top1`). Both run on CPU too with torch >= 2.x (fp16 slowly on most CPUs).

A mode the device cannot run is refused with one paragraph (:func:`check_precision`); nothing
falls back silently to another mode. Training is unaffected.
``TEST.DSA.ALLOW_TF32 True`` (deprecated) means ``tf32``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import DSAInputError

__all__ = ["PRECISIONS", "check_precision", "precision_context", "precision_from_cfg", "tf32_disabled"]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_from_cfg(cfg) -> str:
    """``TEST.DSA.PRECISION``, with the deprecated ``TEST.DSA.ALLOW_TF32 True`` read as ``tf32``."""
    precision = str(cfg.TEST.DSA.PRECISION).lower()
    if precision not in PRECISIONS:
        raise DSAInputError(
            f"config: TEST.DSA.PRECISION is {cfg.TEST.DSA.PRECISION!r}; valid choices are {', '.join(PRECISIONS)}."
        )
    if cfg.TEST.DSA.get("ALLOW_TF32", False):
        if precision not in ("fp32", "tf32"):
            raise DSAInputError(
                f"config: TEST.DSA.ALLOW_TF32 True (deprecated) asks for TF32 but TEST.DSA.PRECISION is "
                f"{precision!r}; set only TEST.DSA.PRECISION."
            )
        logger.warning("TEST.DSA.ALLOW_TF32 is deprecated; it is read as TEST.DSA.PRECISION 'tf32'.")
        precision = "tf32"
    return precision


def check_precision(precision: str, device: torch.device | str) -> None:
    """Raise ``DSAInputError`` unless ``device`` can run series inference in ``precision``.

    For the autocast modes this runs a small convolution under autocast on the device and checks
    that it really computed in the requested type (PyTorch disables autocast with only a warning
    where it cannot honour it).
    """
    if precision not in PRECISIONS:
        raise DSAInputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (TEST.DSA.PRECISION).")
    dtype = _AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return
    device = torch.device(device)
    problem = None
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        problem = f"PyTorch {torch.__version__} has no autocast for {device.type} devices"
    elif device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        problem = f"{torch.cuda.get_device_name(device)} does not support bfloat16"
    else:
        conv = torch.nn.Conv2d(1, 1, 1).to(device)
        try:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
                out_dtype = conv(torch.ones((1, 1, 2, 2), device=device)).dtype
        except RuntimeError as error:
            problem = f"a convolution under autocast failed ({error})"
        else:
            if out_dtype != dtype:
                problem = f"autocast computed in {out_dtype} instead"
    if problem:
        raise DSAInputError(
            f"TEST.DSA.PRECISION {precision!r}: the {device.type} device cannot run inference in {dtype}: "
            f"{problem}. Choose another precision ({', '.join(PRECISIONS)}; 'fp32' runs everywhere); "
            "nothing falls back to another precision on its own, since that would change the results."
        )


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def tf32_disabled():
    """Run the body with TF32 off for CUDA matmuls and cuDNN convolutions; restore the settings after.

    TF32 rounds inputs to 10 mantissa bits, so results depend on which kernels cuDNN picks for a
    batch; in full FP32 the cached and the naive path agree (no effect on CPU).
    """
    return _tf32(False)


@contextmanager
def precision_context(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the body in ``precision`` on ``device`` (call :func:`check_precision` first)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    # fp32 and the autocast modes: TF32 off, so that what autocast leaves in FP32 is strict FP32.
    with _tf32(precision == "tf32"):
        if dtype is None:
            yield
        else:
            with torch.autocast(torch.device(device).type, dtype=dtype):
                yield
