"""The time-course oracle: how well a synthetic cohort's true time courses alone tell its series apart.

A model's AUC on a synthetic cohort means little without knowing what the cohort allows. The
oracle reads the generator's truth file (``synth_truth.json``: every blob's density at each frame
it shows) and applies the clinical rule the project rests on: *a perforation grows and
persists*, that is its contrast never falls and its growth slows down (in both generators a
perforation's density is 0 before onset and then rises as ``1 - exp(-t / tau)``). Look-alikes
break the rule: a crossing or venous pool washes out, a transient spot vanishes, a hard
cohort's flicker jumps between courses.

Each blob gets a *rule violation*, the largest fall of its log-density from one shown frame to
the next or the largest rise of that frame-to-frame step (acceleration), and each series the
score of its best blob: a blob that keeps the rule scores the number of frames it was watched
(a blob watched over many frames without breaking the rule is strong evidence, a one-frame blob
weak), one that breaks it scores minus its violation. The oracle is not a model and not a bound
on one (a Bayes reader could use the truth further); it says that a cohort's target is or is not
within reach of the time course, and how far a model is from it. ``synth`` prints its AUC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["NO_BLOB_SCORE", "RULE_TOLERANCE", "course_violation", "oracle_series_scores"]

# Below this a violation is the truth file's rounding, not the course: densities are written to 4
# decimals, which moves a log-density by at most ~0.001 at the faintest onset density (0.12) and
# a difference of two steps by ~0.004.
RULE_TOLERANCE = 0.01
# A series that shows no blob: below every blob's score (log-densities are floored at 1e-6, so a
# violation is at most about 3 * 14) and finite, as ROC code requires.
NO_BLOB_SCORE = -1000.0


def course_violation(densities: Sequence[float]) -> float:
    """How far one blob's density course breaks "grows and persists" (0 when it keeps the rule).

    The largest fall of log-density between consecutive shown frames, or the largest increase of
    its frame-to-frame step, whichever is larger. Fewer than two frames cannot break the rule.
    """
    raw = np.asarray(densities, dtype=float)
    if not np.isfinite(raw).all():
        raise ValueError(f"a density course holds a non-finite value: {densities!r}")
    values = np.log(np.maximum(raw, 1e-6))
    if values.size < 2:
        return 0.0
    steps = np.diff(values)
    violation = max(0.0, float(-steps.min()))
    if steps.size > 1:
        violation = max(violation, float(np.diff(steps).max()))
    return violation


def _blob_score(event: Mapping[str, Any]) -> float:
    violation = course_violation(event["densities"])
    return float(len(event["frames"])) if violation <= RULE_TOLERANCE else -violation


def oracle_series_scores(truth: Mapping[str, Any], video_ids: Iterable[int] | None = None) -> dict[int, float]:
    """Oracle score of every series of a truth file (or of ``video_ids``): its best blob's score.

    A series with no blob shown scores :data:`NO_BLOB_SCORE`. ``truth`` is the parsed ``synth_truth.json``.
    """
    wanted = None if video_ids is None else set(video_ids)
    scores: dict[int, float] = {}
    for video in truth["videos"]:
        if wanted is not None and video["video_id"] not in wanted:
            continue
        blobs = [_blob_score(event) for event in video["events"] if event["frames"]]
        scores[video["video_id"]] = max(blobs, default=NO_BLOB_SCORE)
    if wanted is not None and wanted - scores.keys():
        missing = sorted(wanted - scores.keys())
        raise ValueError(f"series {missing[:5]} are not in the truth file")
    return scores
