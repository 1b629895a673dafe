"""From modality values to 8-bit display values: Modality LUT tables, VOI windows, percentiles.

A series has one :class:`Window`, taken from its first file: the first VOILUTSequence item
(output range scaled to 0-255); else the first WindowCenter/WindowWidth pair with VOILUTFunction
LINEAR (default), LINEAR_EXACT or SIGMOID (DICOM PS3.3 C.11.2.1.2); else a robust window from the
0.5th to the 99.5th nearest-rank percentile of the series' modality values, computed from
accumulated value counts (exact for integer data) or from an evenly strided sample (float data),
so that no full-size copy of the pixels is ever made. MONOCHROME1 is inverted after windowing,
because DICOM defines the window on the stored (non-inverted) values and inverts at display.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ...errors import DSAInputError
from .dataset import as_float, as_text, get, shown_path

PERCENTILE_WINDOW = (0.5, 99.5)
FLOAT_SAMPLE = 4_000_000  # at most this many float values feed the percentile window


@dataclass
class Window:
    """Maps modality values to [0, 1]; ``kind`` is "lut", "linear", "linear_exact", "sigmoid" or "range"."""

    kind: str
    description: str
    center: float = 0.0
    width: float = 1.0
    lut: np.ndarray | None = None
    lut_first: int = 0

    def unit(self, values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64, copy=False)
        c, w = self.center, self.width
        if self.kind == "lut":
            lut = self.lut.astype(np.float64)
            index = np.clip(np.round(values) - self.lut_first, 0, len(lut) - 1).astype(np.int64)
            low, high = lut.min(), lut.max()
            return (lut[index] - low) / (high - low) if high > low else np.zeros_like(values)
        if self.kind == "linear":  # PS3.3 C.11.2.1.2.1
            return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) if w > 1 else (values > c - 0.5) * 1.0
        if self.kind == "linear_exact":  # PS3.3 C.11.2.1.3.2
            return np.clip((values - c) / w + 0.5, 0.0, 1.0)
        if self.kind == "sigmoid":  # PS3.3 C.11.2.1.3.1
            return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -700, 700)))
        # "range": center..width hold the low and high percentile values
        low, high = c, w
        return np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else (values > low) * 1.0


def to_uint8(values: np.ndarray, window: Window, invert: bool = False) -> np.ndarray:
    """``values`` windowed to 0..255; ``invert`` for MONOCHROME1 (255 - y, after windowing)."""
    display = np.round(window.unit(values) * 255.0).astype(np.uint8)
    return np.subtract(255, display, out=display) if invert else display


def window_of(ds: Dataset) -> Window | None:
    """The file's first VOI LUT, else its first valid window centre/width, else None."""
    voi = get(ds, "VOILUTSequence")
    if voi:
        try:
            item = voi[0]
            entries, first, _bits = (int(v) for v in item.LUTDescriptor)
            data = item.LUTData
            lut = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.float64)
            if lut.size >= 1 and np.isfinite(lut).all() and entries in (lut.size, lut.size % 65536):
                return Window("lut", "VOI LUT (first)", lut=lut.astype(np.float64), lut_first=first)
        except Exception:  # a malformed VOI LUT falls back to the window/percentiles
            pass
    center, width = get(ds, "WindowCenter", as_float), get(ds, "WindowWidth", as_float)
    if center is None or width is None:
        return None
    function = (get(ds, "VOILUTFunction", as_text) or "LINEAR").upper()
    kind = {"LINEAR_EXACT": "linear_exact", "SIGMOID": "sigmoid"}.get(function, "linear")
    if width < (1 if kind == "linear" else 1e-12):
        return None
    return Window(kind, f"window centre/width (first), {kind.upper()}", center=center, width=width)


def modality_table(path: Path, ds: Dataset, low: int, high: int) -> np.ndarray:
    """The modality value (float64) of every stored value ``low..high``, by pydicom's
    ``apply_modality_lut`` (ModalityLUTSequence, else RescaleSlope/Intercept): one table per file,
    so the whole integer pipeline is one lookup per pixel."""
    stored_values = np.arange(low, high + 1, dtype=np.int64)
    try:
        table = np.asarray(apply_modality_lut(stored_values, ds), dtype=np.float64)
    except Exception as err:  # malformed Modality LUT / rescale values
        raise DSAInputError(
            f"{shown_path(path)}: its Modality LUT or rescale slope/intercept cannot be applied "
            f"({type(err).__name__}); the header is damaged."
        ) from None
    if table.shape != stored_values.shape or not np.isfinite(table).all():
        raise DSAInputError(f"{shown_path(path)}: its Modality LUT or rescale slope/intercept gives invalid values.")
    return table


def percentile_window(values: np.ndarray, counts: np.ndarray) -> Window:
    """The nearest-rank window of a population given as distinct-or-not ``values`` with ``counts``:
    the q-th percentile is the smallest value whose cumulative count reaches ceil(q/100 * n)."""
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(counts[order])
    low, high = (
        float(values[np.searchsorted(cumulative, max(math.ceil(q / 100 * cumulative[-1]), 1))])
        for q in PERCENTILE_WINDOW
    )
    return Window("range", f"percentile {PERCENTILE_WINDOW[0]}-{PERCENTILE_WINDOW[1]} of the series",
                  center=low, width=high)


def float_sample_stride(total_values: int) -> int:
    """The stride of the evenly strided float sample: at most ``FLOAT_SAMPLE`` values in all."""
    return -(-total_values // FLOAT_SAMPLE)  # ceil
