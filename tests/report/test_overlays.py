"""The series GIF keeps one frame per series frame and a frame delay that GIF can store."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from perforation_d2.report.overlays import save_series_gif


@pytest.mark.parametrize(
    ("frame_time_ms", "expected_ms"),
    [
        (10**6, 655_350),  # beyond GIF's 16-bit centisecond delay: the longest storable one
        (655_350, 655_350),
        (125.0, 120),  # GIF stores centiseconds: Pillow truncates 125 ms to 12 cs
        (5.0, 20),  # browsers play shorter delays at 100 ms
        (None, 100),
        (float("nan"), 100),
        (float("inf"), 100),
        (-40.0, 100),
    ],
)
def test_gif_frame_delay_is_clamped_to_what_gif_stores(tmp_path, frame_time_ms, expected_ms):
    frames = np.zeros((3, 16, 16), dtype=np.uint8)
    frames[1] = 128
    path = tmp_path / "series.gif"
    save_series_gif(path, frames, [None, [2, 2, 8, 8], None], [None, 0.5, None], frame_time_ms)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        assert gif.info["duration"] == expected_ms
