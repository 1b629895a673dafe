"""Series-level ROC statistics: AUC, the Youden operating point and sensitivity at 95% specificity.

Both points are the first maximum in scikit-learn's ROC order, i.e. the highest threshold among
ties. The 95%-specificity point is the highest sensitivity with FPR <= 0.05. The trainer's stored
decision threshold (:class:`perforation_d2.engine.operating_point.OperatingPoint`) is taken from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass
class RocStatistics:
    """ROC statistics of one set of series scores; every field None when a single class is present."""

    auc: float | None
    threshold: float | None  # Youden; may be +inf (nothing positive)
    sensitivity: float | None
    specificity: float | None
    sens_at_95spec: float | None
    fpr: np.ndarray | None
    tpr: np.ndarray | None
    # The threshold behind ``sens_at_95spec`` and its specificity; the threshold may be +inf.
    spec95_threshold: float | None = None
    spec95_specificity: float | None = None


def roc_statistics(labels: np.ndarray, scores: np.ndarray) -> RocStatistics:
    """AUC, Youden operating point and sensitivity at 95% specificity of ``scores`` against ``labels``."""
    if len(np.unique(labels)) < 2:
        return RocStatistics(None, None, None, None, None, None, None)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    youden = int(np.argmax(tpr - fpr))
    allowed = np.flatnonzero(fpr <= 0.05)  # never empty: the curve starts at FPR 0
    spec95 = int(allowed[np.argmax(tpr[allowed])])
    return RocStatistics(
        auc=float(roc_auc_score(labels, scores)),
        threshold=float(thresholds[youden]),
        sensitivity=float(tpr[youden]),
        specificity=float(1.0 - fpr[youden]),
        sens_at_95spec=float(tpr[spec95]),
        fpr=fpr,
        tpr=tpr,
        spec95_threshold=float(thresholds[spec95]),
        spec95_specificity=float(1.0 - fpr[spec95]),
    )
