"""Series-level evaluation (paper sections 2.4 and 4.2-4.5), in the order the data flows:

series optimisation (``series_optimization``), the one series-decision pipeline from predictions to
series scores (``predictions``, on the cohort of ``cohort_index``), box matching (``matching``),
COCO APs (``coco``), ROC statistics (``roc``), the metrics (``metrics``), DeLong and bootstrap
statistics, plots, the Detectron2 evaluator (``evaluator``), inference over a cohort
(``inference``), which series to score (``selection``) and the model comparison (``comparison``).
"""

from .delong import delong_test
from .evaluator import DSASeriesEvaluator
from .metrics import compute_series_metrics
from .series_optimization import Detection, optimize_series

__all__ = ["DSASeriesEvaluator", "Detection", "compute_series_metrics", "delong_test", "optimize_series"]
