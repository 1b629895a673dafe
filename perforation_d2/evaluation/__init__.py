"""Series-level evaluation: series optimisation, metrics, DeLong test and the Detectron2 evaluator.

SPEC sections 3 and 4; paper sections 2.4 and 4.2-4.5.
"""

from .delong import delong_test
from .evaluator import DSASeriesEvaluator
from .metrics import compute_series_metrics
from .series_optimization import Detection, optimize_series

__all__ = ["DSASeriesEvaluator", "Detection", "compute_series_metrics", "delong_test", "optimize_series"]
