"""ROC and precision-recall figures, rendered to PNG bytes.

Figures are built on matplotlib's object API with the Agg canvas, never through ``pyplot``: no
global backend switch, no display needed, and nothing leaks between calls (training processes
draw these after every evaluation). They are rendered in memory so that a command can write all
of its outputs as one set (:class:`~perforation_d2.io.transaction.OutputTransaction`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io.atomic import atomic_write_bytes
from .metrics import SeriesEvaluation


def _figure() -> Figure:
    figure = Figure(figsize=(4.5, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def roc_plot_png(
    curves: Sequence[tuple[str, np.ndarray | None, np.ndarray | None, float | None]],
    operating_point: tuple[float, float] | None = None,
    title: str = "Series-level ROC",
) -> bytes:
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
    return _finish_unit_square(figure, axes, "1 - specificity", "sensitivity", title, "lower right")


def _finish_unit_square(figure, axes, xlabel: str, ylabel: str, title: str, legend_loc: str,
                        unit_x: bool = True) -> bytes:
    """Axes over [0, 1] x [0, 1] (x as the data has it without ``unit_x``) with labels, title and
    legend; the figure as PNG bytes."""
    if unit_x:
        axes.set_xlim(-0.01, 1.01)
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(loc=legend_loc, fontsize="small")
    return _png(figure)


def pr_plot_png(
    precision: np.ndarray,
    recall: np.ndarray,
    auprc: float | None,
    title: str = "Box-level PR (centre criterion)",
) -> bytes:
    """The step-wise precision-recall curve behind ``AUPRC_center``."""
    return pr_overlay_png([("", precision, recall, auprc)], title)


def pr_overlay_png(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray, float | None]],
    title: str = "Box-level PR (centre criterion)",
) -> bytes:
    """Step-wise precision-recall curves ``(name, precision, recall, auprc)`` on one plot."""
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    for name, precision, recall, auprc in curves:
        label = f"{name} (AUPRC {_format_value(auprc)})" if name else f"AUPRC {_format_value(auprc)}"
        if len(recall):
            axes.step(np.concatenate([[0.0], recall]), np.concatenate([[precision[0]], precision]),
                      where="pre", label=label)
        else:
            axes.plot([], [], label=f"{name} (no detection)" if name else "no detection")
    return _finish_unit_square(figure, axes, "recall", "precision", title, "lower left")


def learning_curve_png(
    curves: Sequence[tuple[str, Sequence[float], Sequence[float | None], Sequence[float | None]]],
    ylabel: str = "series AUC",
    title: str = "Learning curve",
    xlabel: str = "fraction of training patients",
    members: Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]] | None = None,
) -> bytes:
    """``(name, xs, means, stds)`` as lines with error bars, y over [0, 1].

    The default x is the fraction of training patients, over [0, 1]. With ``members`` (name ->
    the ``(xs, ys)`` lines a curve is the mean of, e.g. one per fold) those are drawn thin in the
    curve's colour, the mean bold, and x spans the data (e.g. iterations).
    """
    figure = _figure()
    axes = figure.add_subplot(1, 1, 1)
    for index, (name, xs_all, means, stds) in enumerate(curves):
        colour = f"C{index % 10}"
        for member_xs, member_ys in (members or {}).get(name, ()):
            axes.plot(member_xs, member_ys, color=colour, linewidth=0.8, alpha=0.45)
        shown = [(x, m, s or 0.0) for x, m, s in zip(xs_all, means, stds) if m is not None]
        if shown:
            xs, ys, errs = zip(*shown)
            axes.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", capsize=3, color=colour,
                          linewidth=2.5 if members else 1.5, label=name)
    return _finish_unit_square(figure, axes, xlabel, ylabel, title, "lower right", unit_x=members is None)


def evaluation_plot_pngs(evaluation: SeriesEvaluation, title_suffix: str = "") -> dict[str, bytes]:
    """``{"roc.png": ..., "pr.png": ...}`` of one evaluation."""
    metrics = evaluation.metrics
    point = None
    if metrics["sensitivity"] is not None:
        point = (1.0 - metrics["specificity"], metrics["sensitivity"])
    return {
        "roc.png": roc_plot_png(
            [("series", evaluation.roc_fpr, evaluation.roc_tpr, metrics["AUC"])], point,
            title="Series-level ROC" + title_suffix,
        ),
        "pr.png": pr_plot_png(
            evaluation.pr_precision, evaluation.pr_recall, metrics["AUPRC_center"],
            title="Box-level PR, centre criterion" + title_suffix,
        ),
    }


def save_evaluation_plots(
    directory: str | os.PathLike, evaluation: SeriesEvaluation, title_suffix: str = "", overwrite: bool = False
) -> list[str]:
    """Write ``roc.png`` and ``pr.png`` of one evaluation into ``directory``; returns the paths."""
    paths = []
    for name, png in evaluation_plot_pngs(evaluation, title_suffix).items():
        paths.append(os.path.join(directory, name))
        atomic_write_bytes(paths[-1], png, overwrite=overwrite)
    return paths
