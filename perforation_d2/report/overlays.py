"""Overlays of series predictions: an animated GIF per series and a key-frame PNG.

Both draw, on the original grey frames, the box and score that survived series-level
optimisation. Every GIF frame carries its frame number, which also keeps
Pillow from merging identical consecutive frames: a GIF always has exactly one frame per
series frame. GIF frames are drawn directly in a fixed palette (grey levels plus the overlay
colours), so no per-frame colour quantisation is needed: a 75-frame 512 px series takes a
fraction of a second instead of seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.atomic import atomic_save_image

BOX_RGB = (255, 64, 32)
TEXT_RGB = (255, 255, 0)
OUTLINE_RGB = (0, 0, 0)
# GIF palette: 252 grey levels, then the overlay colours.
_GREY_LEVELS = 252
_BOX_INDEX, _TEXT_INDEX, _OUTLINE_INDEX = _GREY_LEVELS, _GREY_LEVELS + 1, _GREY_LEVELS + 2
_GREY_LUT = np.round(np.arange(256) * (_GREY_LEVELS - 1) / 255).astype(np.uint8)
_PALETTE = [round(i * 255 / (_GREY_LEVELS - 1)) for i in range(_GREY_LEVELS) for _ in range(3)]
_PALETTE += [*BOX_RGB, *TEXT_RGB, *OUTLINE_RGB] + [0, 0, 0] * (256 - _GREY_LEVELS - 3)
# Browsers play GIF frames shorter than 20 ms at 100 ms; keep the acquisition's pace otherwise.
MIN_GIF_FRAME_MS = 20
DEFAULT_GIF_FRAME_MS = 100
# GIF stores a frame's delay as an unsigned 16-bit count of centiseconds: 655.35 s at most. A
# longer (or absurd, e.g. 10**6 ms) DICOM FrameTime is shown at that longest delay instead of
# overflowing the encoder.
MAX_GIF_FRAME_MS = 65535 * 10


def gif_frame_ms(frame_time_ms: float | None) -> int:
    """The GIF frame delay for an acquisition's frame time (the default when unknown or not a positive number)."""
    if frame_time_ms is None or not math.isfinite(frame_time_ms) or frame_time_ms <= 0:
        return DEFAULT_GIF_FRAME_MS
    return int(min(MAX_GIF_FRAME_MS, max(MIN_GIF_FRAME_MS, round(frame_time_ms))))


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 2:
        raise ValueError(f"overlay frames must be 2-D uint8, got {frame.dtype} {frame.shape}")
    return frame


def _draw(
    image: Image.Image,
    box_xyxy: Sequence[float] | None,
    score: float | None,
    caption: str,
    scale: float,
    colours: tuple,
) -> Image.Image:
    """Draw box, score and caption on ``image`` in place; ``colours`` = (box, text, outline)."""
    box_colour, text_colour, outline_colour = colours
    draw = ImageDraw.Draw(image)
    # Text and lines scale with the frame, so that they stay readable on 1024 px frames.
    font = ImageFont.load_default(size=max(10, min(image.size) // 40))
    text_height = getattr(font, "size", 11)
    line_width = max(1, round(min(image.size) / 200))
    if box_xyxy is not None:
        x0, y0, x1, y1 = (float(v) * scale for v in box_xyxy)
        draw.rectangle([x0, y0, x1, y1], outline=box_colour, width=line_width)
        if score is not None:
            text_y = y0 - text_height - 2 if y0 >= text_height + 2 else y1 + 2
            draw.text((x0, text_y), f"{score:.2f}", fill=box_colour, font=font,
                      stroke_width=1, stroke_fill=outline_colour)
    if caption:
        draw.text((3, 3), caption, fill=text_colour, font=font, stroke_width=1, stroke_fill=outline_colour)
    return image


def draw_detection(
    frame: np.ndarray, box_xyxy: Sequence[float] | None, score: float | None, caption: str = ""
) -> Image.Image:
    """One grey frame ``(H, W)`` uint8 as an RGB image with its box (original pixels), score and caption."""
    image = Image.fromarray(_grey(frame)).convert("RGB")
    return _draw(image, box_xyxy, score, caption, 1.0, (BOX_RGB, TEXT_RGB, OUTLINE_RGB))


def _palette_frame(frame: np.ndarray, scale: float) -> Image.Image:
    """The grey frame (resized bilinearly by ``scale``) as a "P" image in the overlay palette."""
    grey = Image.fromarray(_grey(frame))
    if scale != 1.0:
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.BILINEAR)
    image = Image.fromarray(_GREY_LUT[np.asarray(grey)], mode="P")
    image.putpalette(_PALETTE)
    return image


def save_series_gif(
    path: str | Path,
    frames: np.ndarray,
    boxes: Sequence[Sequence[float] | None],
    scores: Sequence[float | None],
    frame_time_ms: float | None = None,
    max_side: int = 512,
    overwrite: bool = False,
) -> None:
    """Write an animated GIF of ``frames`` ((F, H, W) uint8) with one optional box (XYXY) per frame.

    Frames larger than ``max_side`` are downscaled for the GIF (the key-frame PNG keeps the full
    resolution); the playback pace follows ``frame_time_ms`` when the acquisition recorded it.
    """
    frames = np.asarray(frames)
    if len(boxes) != len(frames) or len(scores) != len(frames):
        raise ValueError("one box and one score (or None) per frame are needed")
    height, width = frames.shape[1:3]
    scale = min(1.0, max_side / max(height, width))
    colours = (_BOX_INDEX, _TEXT_INDEX, _OUTLINE_INDEX)
    images = [
        _draw(_palette_frame(frame, scale), box, score, f"{index + 1}/{len(frames)}", scale, colours)
        for index, (frame, box, score) in enumerate(zip(frames, boxes, scores))
    ]
    duration = gif_frame_ms(frame_time_ms)
    atomic_save_image(
        path, images[0], overwrite=overwrite, save_all=True, append_images=images[1:],
        duration=duration, loop=0,
    )


def save_key_frame_png(
    path: str | Path,
    frame: np.ndarray,
    box_xyxy: Sequence[float] | None,
    score: float | None,
    caption: str = "",
    overwrite: bool = False,
) -> None:
    """Write one frame, full resolution, with its box and score drawn."""
    atomic_save_image(path, draw_detection(frame, box_xyxy, score, caption=caption), overwrite=overwrite)
