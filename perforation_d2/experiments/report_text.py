"""``report.md`` of a cross-validation experiment, written from its ``results.json`` content."""

from __future__ import annotations

from typing import Any

COLUMNS = (("AUC", "AUC"), ("sensitivity", "Sens"), ("specificity", "Spec"), ("sens_at_95spec", "mSens95"),
           ("precision_iou50", "AP50"), ("recall_iou50", "AR50"), ("precision_center", "AP_cin"),
           ("recall_center", "AR_cin"), ("AUPRC_center", "AUPRC"))


def format_mean_std(cell: dict[str, Any] | None) -> str:
    """``0.912 (± 0.014)``, the paper's notation; ``-`` when undefined."""
    if not cell or cell.get("mean") is None:
        return "-"
    if cell.get("std") is None:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} (± {cell['std']:.3f})"


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def report_markdown(results: dict[str, Any]) -> str:
    lines = ["# Cross-validation report", ""]
    kind = "leave-one-cohort-out" if results["split_kind"] == "loco" else "patient-level K-fold"
    lines += [f"Cohort `{results['cohort']}`, {kind} splits, {results['runs']} run(s) per model (run r trains with "
              f"SEED r). Each series is scored by the model that never saw its patient; metrics over the pooled "
              f"out-of-fold predictions; mean (± {results['std']}).", ""]
    lines += ["## Table 1", "", "| Method | " + " | ".join(title for _, title in COLUMNS) + " | runs |",
              "|---" * (len(COLUMNS) + 2) + "|"]
    for model, cells in results["table1"].items():
        runs = cells["AUC"]["n"]
        lines.append(f"| {model} | " + " | ".join(format_mean_std(cells.get(key)) for key, _ in COLUMNS) + f" | {runs} |")
    lines.append("")
    if results.get("per_split_auc") and not results.get("table4"):
        models = list(results["over_splits_auc"])
        lines += ["## AUC per held-out fold", "", "Each fold's held-out series alone (mean over runs); the last row is the "
                  "mean (± sample std) over folds.", "", "| fold | " + " | ".join(models) + " |",
                  "|---" * (len(models) + 1) + "|"]
        for split, row in results["per_split_auc"].items():
            lines.append(f"| {split} | " + " | ".join(format_mean_std(row.get(m)) for m in models) + " |")
        lines.append("| over folds | " + " | ".join(format_mean_std(results["over_splits_auc"][m]) for m in models) + " |")
        lines.append("")
    if results["delong"]:
        lines += ["## DeLong tests (per run)", "", "| A | B | runs | median p | runs with p < 0.05 |",
                  "|---|---|---|---|---|"]
        for test in results["delong"]:
            lines.append(f"| {test['a']} | {test['b']} | {test['runs']} | {_p(test['median_p'])} | "
                         f"{test['significant_runs']} |")
        lines.append("")
    if results.get("anova"):
        anova = results["anova"]
        lines += [f"One-way ANOVA of the runs' AUCs across {', '.join(anova['models'])}: F = {anova['F']:.3f}, "
                  f"p = {_p(anova['p_value'])}.", ""]
    if results.get("table2"):
        lines += ["## Table 2: clip length", "", "| T | AUC |", "|---|---|"]
        lines += [f"| {t} | {format_mean_std(cell)} |" for t, cell in sorted(results["table2"].items(), key=lambda i: int(i[0]))]
        lines.append("")
    if results.get("table4"):
        models = sorted({m for row in results["table4"].values() for m in row})
        lines += ["## Table 4: held-out cohorts (AUC)", "", "| held out | " + " | ".join(models) + " |",
                  "|---" * (len(models) + 1) + "|"]
        for split, row in results["table4"].items():
            lines.append(f"| {split.removeprefix('loco_')} | " + " | ".join(format_mean_std(row.get(m)) for m in models) + " |")
        lines.append("")
    if results.get("learning_curve"):
        lines += ["## Learning curve", "", "![learning curve](learning_curve.png)", "",
                  "| model | fraction | AUC | mSens95 |", "|---|---|---|---|"]
        for model, points in results["learning_curve"].items():
            for fraction, cell in sorted(points.items(), key=lambda i: float(i[0])):
                lines.append(f"| {model} | {fraction} | {format_mean_std(cell['AUC'])} | "
                             f"{format_mean_std(cell['sens_at_95spec'])} |")
        lines.append("")
    lines += ["## Curves", "", "Pooled out-of-fold ROC and box-level PR (centre criterion) of the run whose AUC is "
              f"closest to its model's mean ({', '.join(f'{m}: run {r}' for m, r in results['overlay_runs'].items())}).",
              "", "![ROC](roc_overlay.png) ![PR](pr_overlay.png)", ""]
    if results["missing"]:
        lines += ["## Missing cells", "", "These (model, run) cells are not in the tables yet:", ""]
        for cell in results["missing"]:
            reasons = "; ".join(f"{split}: {info['state']}" + (f" ({info['detail']})" if info["detail"] else "")
                                + (f", log {info['log']}" if info["log"] else "") for split, info in cell["splits"].items())
            lines.append(f"- {cell['model']} {cell['split_set']} run {cell['run']}: {reasons}")
        lines.append("")
    return "\n".join(lines)
