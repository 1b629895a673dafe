"""The synthetic cohort's contact sheet, ``preview.png``: a look at what the generator drew.

Runs in rows, frames in columns, each frame captioned with its circulation phase; the
perforation's ground-truth box is drawn in red and every look-alike (not annotated) is marked by
kind, so that a reader sees at a glance that one frame cannot tell them apart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .series import RenderedSeries, SeriesPlan

__all__ = ["PREVIEW_FILE", "contact_sheet", "preview_choice"]

PREVIEW_FILE = "preview.png"


def preview_choice(plans: list[SeriesPlan], rows: int = 8) -> list[int]:
    """Indices of up to ``rows`` runs for the contact sheet: half positive, half negative, long ones first."""
    long_first = sorted(range(len(plans)), key=lambda i: (plans[i].num_frames < 8, i))
    pos = [i for i in long_first if plans[i].label == 1][: rows // 2]
    neg = [i for i in long_first if plans[i].label == 0][: rows - len(pos)]
    return sorted(pos + neg)


_KIND_COLOUR = {"crossing": (255, 200, 0), "venous_pool": (0, 200, 255), "transient": (255, 0, 255),
                "flicker": (120, 255, 120)}
_KIND_MARK = {"crossing": "X", "venous_pool": "V", "transient": "T", "flicker": "F"}
_OTHER_COLOUR = (200, 200, 200)  # a look-alike kind added to the generator later


def contact_sheet(entries: list[tuple[SeriesPlan, RenderedSeries]], size: int, columns: int = 10) -> Image.Image:
    """Runs in rows (label, name, length, frame rate, look-alike kinds), up to ``columns`` frames
    each with their phase; the perforation's box in red, look-alikes marked by kind."""
    tile = min(size, 160)
    label_w, head_h, gap = 150, 14, 2
    scale = tile / size
    sheet = Image.new(
        "RGB", (label_w + columns * (tile + gap), head_h + max(1, len(entries)) * (tile + head_h + gap)), (24, 24, 24)
    )
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text(
        (4, 2), "red: perforation (GT box)   look-alikes: X crossing, V venous pool, T transient (not annotated)",
        fill=(230, 230, 230), font=font,
    )
    for row, (plan, rendered) in enumerate(entries):
        y = head_h + row * (tile + head_h + gap)
        pos = plan.label == 1
        draw.text((4, y + head_h + 4), "POSITIVE" if pos else "NEGATIVE", fill=(255, 70, 70) if pos else (90, 220, 90), font=font)
        draw.text((4, y + head_h + 20), plan.name, fill=(230, 230, 230), font=font)
        fps = "single frame" if plan.frame_time_ms is None else f"{1000.0 / plan.frame_time_ms:.1f} fps"
        draw.text((4, y + head_h + 36), f"{plan.num_frames} frames, {fps}", fill=(200, 200, 200), font=font)
        kinds = sorted({ev.kind for ev in plan.events if ev.kind != "perforation" and ev.visible.any()})
        if kinds:
            draw.text((4, y + head_h + 52), " ".join(_KIND_MARK.get(k, "?") for k in kinds), fill=(255, 220, 120), font=font)
        phases = plan.phases()
        shown = np.unique(np.linspace(0, plan.num_frames - 1, min(plan.num_frames, columns)).round().astype(int))
        for col, f in enumerate(shown.tolist()):
            x = label_w + col * (tile + gap)
            draw.text((x + 2, y + 1), f"#{f} {phases[f]}", fill=(200, 200, 200), font=font)
            frame = Image.fromarray(rendered.frames[f]).convert("RGB")
            if tile != size:
                frame = frame.resize((tile, tile), Image.BILINEAR)
            sheet.paste(frame, (x, y + head_h))
            for ev, boxes in zip(plan.events, rendered.boxes):
                box = boxes[f]
                if box is None:
                    continue
                bx, by, bw, bh = (v * scale for v in box)
                rect = [x + bx, y + head_h + by, x + bx + bw, y + head_h + by + bh]
                if ev.kind == "perforation":
                    draw.rectangle(rect, outline=(255, 40, 40), width=2 if tile >= 128 else 1)
                else:
                    colour = _KIND_COLOUR.get(ev.kind, _OTHER_COLOUR)
                    draw.rectangle(rect, outline=colour, width=1)
                    draw.text((rect[2] + 1, rect[1] - 2), _KIND_MARK.get(ev.kind, "?"), fill=colour, font=font)
    return sheet
