"""ROC and precision-recall figures (PNG).

Figures are built on matplotlib's object API with the Agg canvas, never through ``pyplot``: no
global backend switch, no display needed, and nothing leaks between calls (training processes
draw these after every evaluation).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.fileio import atomic_save_figure
from .metrics import SeriesEvaluation


def _figure() -> Figure:
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def save_roc_plot(
    path: str | os.PathLike,
    curves: Sequence[tuple[str, np.ndarray | None, np.ndarray | None, float | None]],
    operating_point: tuple[float, float] | None = None,
    title: str = "Series-level ROC",
    overwrite: bool = False,
) -> None:
    """ROC curves ``(name, fpr, tpr, auc)`` on one plot; ``operating_point`` is ``(fpr, tpr)``.

    A curve with ``fpr`` None (a single class) is listed in the legend as unavailable.
    """
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, fpr, tpr, auc in curves:
        if fpr is None or tpr is None:
            axes.plot([], [], label=f"{name} (AUC n/a: one class)")
        else:
            axes.plot(fpr, tpr, label=f"{name} (AUC {_format_value(auc)})")  # trapezoids, as the AUC
    if operating_point is not None:
        axes.plot([operating_point[0]], [operating_point[1]], "o", color="black", label="Youden point")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("1 - specificity")
    axes.set_ylabel("sensitivity")
    axes.set_title(title)
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    atomic_save_figure(path, figure, overwrite=overwrite)


def save_pr_plot(
    path: str | os.PathLike,
    precision: np.ndarray,
    recall: np.ndarray,
    auprc: float | None,
    title: str = "Box-level PR (centre criterion)",
    overwrite: bool = False,
) -> None:
    """The step-wise precision-recall curve behind ``AUPRC_center``."""
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    if len(recall):
        axes.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
                  where="pre", label=f"AUPRC {_format_value(auprc)}")
    else:
        axes.plot([], [], label="no detection")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    atomic_save_figure(path, figure, overwrite=overwrite)


def save_evaluation_plots(
    directory: str | os.PathLike, evaluation: SeriesEvaluation, title_suffix: str = "", overwrite: bool = False
) -> list[str]:
    """Write ``roc.png`` and ``pr.png`` of one evaluation into ``directory``; returns the paths."""
    metrics = evaluation.metrics
    roc_path = os.path.join(directory, "roc.png")
    pr_path = os.path.join(directory, "pr.png")
    point = None
    if metrics["sensitivity"] is not None:
        point = (1.0 - metrics["specificity"], metrics["sensitivity"])
    save_roc_plot(
        roc_path, [("series", evaluation.roc_fpr, evaluation.roc_tpr, metrics["AUC"])], point,
        title="Series-level ROC" + title_suffix, overwrite=overwrite,
    )
    save_pr_plot(
        pr_path, evaluation.pr_precision, evaluation.pr_recall, metrics["AUPRC_center"],
        title="Box-level PR, centre criterion" + title_suffix, overwrite=overwrite,
    )
    return [roc_path, pr_path]
