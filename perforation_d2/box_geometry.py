"""The centre-overlap relation between two boxes (``x, y, w, h``), the one place it is defined.

Series optimisation links detections of consecutive frames with it (SPEC section 3), box matching
uses it, and time-order negatives follow a perforation through a clip's frames with it: a growing
or slightly moving lesion keeps its centre inside its box from frame to frame.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["centre_in_box", "centres_overlap"]


def centre_in_box(box: Sequence[float], other: Sequence[float]) -> bool:
    """Whether the centre of ``box`` lies inside ``other`` (both ``x, y, w, h``; borders inclusive)."""
    cx = box[0] + box[2] / 2.0
    cy = box[1] + box[3] / 2.0
    return other[0] <= cx <= other[0] + other[2] and other[1] <= cy <= other[1] + other[3]


def centres_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """The centre-overlap criterion: the centre of ``a`` inside ``b`` or the centre of ``b`` inside ``a``."""
    return centre_in_box(a, b) or centre_in_box(b, a)
