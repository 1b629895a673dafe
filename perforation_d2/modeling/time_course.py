"""Time-course maps: what input fusion feeds the backbone, computed from a clip's grey frames.

Under ``MODEL.TEMPORAL.FUSION "input"`` the stem sees every pixel's time-intensity curve over the
clip. ``MODEL.TEMPORAL.INPUT_MAPS`` says in which form, as a list of map families stacked along
the channel axis in the order given:

* ``"frames"``: the T frames themselves (T channels, the centre frame at T // 2);
* ``"extrema"``: how far the pixel rose above and fell below the centre frame before it and after
  it (4 channels: past max - centre, centre - past min, future max - centre, centre - future
  min). All four are 0 for a static pixel; a pixel that fills and stays (an extravasation that
  grows and persists) has only "rose before" in one polarity and only "rises after" in the
  other, while one that washes out, or jumps between sizes, has both. Both polarities are kept,
  so MONOCHROME1-like inverted runs need no special case;
* ``"differences"``: the T - 1 frame-to-frame changes (slot j+1 minus slot j), the pixel's speed
  of filling or emptying.

Why: raw frames carry the same information, but a stem started from scratch (or from an
ImageNet kernel on the centre slot) must first learn to compare slots before it can learn what a
perforation's course is. Order statistics are not what a few hundred SGD steps find on their
own: with frames alone, input fusion did not use time on the hard synthetic cohort (README,
"Temporal learning"). The maps are deterministic functions of the clip, so the clip ablations
(centre repeated, reversed, shuffled) act on them as on the frames, and cached series inference,
the export and the pretrained stem inflation treat them as more input channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DSAInputError

__all__ = ["TIME_COURSE_MAPS", "centre_channel", "check_time_course_maps", "time_course_channels", "time_course_maps"]

TIME_COURSE_MAPS = ("frames", "extrema", "differences")


def check_time_course_maps(maps: Sequence[str]) -> None:
    """Raise :class:`DSAInputError` unless ``maps`` is a valid ``MODEL.TEMPORAL.INPUT_MAPS``."""
    if isinstance(maps, str):
        raise DSAInputError(f"config: MODEL.TEMPORAL.INPUT_MAPS is the string {maps!r}; it must be a list, "
                            f"e.g. [{maps!r}], of {', '.join(TIME_COURSE_MAPS)}.")
    maps = list(maps)
    unknown = [m for m in maps if m not in TIME_COURSE_MAPS]
    if not maps or unknown or len(set(maps)) != len(maps):
        problem = (f"{', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not a map" if unknown
                   else "it is empty" if not maps else "a map is listed twice")
        raise DSAInputError(
            f"config: MODEL.TEMPORAL.INPUT_MAPS is {maps!r}: {problem}. It lists the input-fusion "
            f"channel families, each at most once, from {', '.join(TIME_COURSE_MAPS)}."
        )


def _channels(name: str, num_frames: int) -> int:
    return {"frames": num_frames, "extrema": 4, "differences": num_frames - 1}[name]


def time_course_channels(maps: Sequence[str], num_frames: int) -> int:
    """Number of input channels the stem gets for a clip of ``num_frames`` frames."""
    check_time_course_maps(maps)
    return sum(_channels(m, num_frames) for m in maps)


def centre_channel(maps: Sequence[str], num_frames: int) -> int | None:
    """Channel of the unaltered centre frame (where an RGB stem is inflated to), or None without ``"frames"``."""
    check_time_course_maps(maps)
    offset = 0
    for m in maps:
        if m == "frames":
            return offset + num_frames // 2
        offset += _channels(m, num_frames)
    return None


def time_course_maps(clip: torch.Tensor, maps: Sequence[str]) -> torch.Tensor:
    """Clips of grey frames (N, T, H, W) -> the stacked maps (N, C, H, W), C = ``time_course_channels``."""
    t = clip.shape[1]
    centre = clip[:, t // 2 : t // 2 + 1]
    parts = []
    for m in maps:
        if m == "frames":
            parts.append(clip)
        elif m == "extrema":
            past, future = clip[:, : t // 2 + 1], clip[:, t // 2 :]
            parts += [past.amax(1, keepdim=True) - centre, centre - past.amin(1, keepdim=True),
                      future.amax(1, keepdim=True) - centre, centre - future.amin(1, keepdim=True)]
        elif m == "differences":
            parts.append(clip[:, 1:] - clip[:, :-1])
        else:
            check_time_course_maps(maps)
    return torch.cat(parts, dim=1)
