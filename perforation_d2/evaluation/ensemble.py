"""The ensemble of the paper's Table 1: the median of several models' series scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ENSEMBLE_NAME = "Ensemble (median)"


def median_ensemble(score_sets: Sequence[np.ndarray]) -> np.ndarray:
    """Per-series median of ``score_sets`` (one array per model, the same series order in each)."""
    return np.median(np.stack([np.asarray(scores, dtype=float) for scores in score_sets]), axis=0)
