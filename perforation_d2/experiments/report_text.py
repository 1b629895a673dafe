"""``report.md`` of a cross-validation experiment, written from its ``results.json`` content,
and the mean (± std over runs) cells its tables are made of."""

from __future__ import annotations

from typing import Any

import numpy as np

COLUMNS = (("AUC", "AUC"), ("sensitivity", "Sens"), ("specificity", "Spec"), ("sens_at_95spec", "mSens95"),
           ("precision_iou50", "AP50"), ("recall_iou50", "AR50"), ("precision_center", "AP_cin"),
           ("recall_center", "AR_cin"), ("AUPRC_center", "AUPRC"))


def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) of the defined values; std None below 2 runs."""
    defined = [float(v) for v in values if v is not None]
    return {
        "mean": float(np.mean(defined)) if defined else None,
        "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
        "n": len(defined),
        "values": [None if v is None else float(v) for v in values],
    }


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


def time_course_oracle_markdown(oracle: dict[str, Any]) -> list[str]:
    """The oracle's pooled and per-fold AUC (``diagnostics.time_course_oracle``) as markdown lines."""
    def cells(entry: dict[str, Any]) -> str:
        auc = "n/a" if entry["AUC"] is None else f"{entry['AUC']:.3f}"
        sens = "n/a" if entry["sens_at_95spec"] is None else f"{entry['sens_at_95spec']:.3f}"
        return f"{auc} | {sens} | {entry['series']} ({entry['positives']} positive)"
    lines = [f"What the cohort's true time courses allow (`{oracle['truth_file']}` read by the rule \"a perforation "
             "grows and persists\": perforation_d2/synth/oracle.py), on the same held-out series. It is not a model; "
             "a temporal model far below it leaves the time course unused.", "",
             "| held out | oracle AUC | oracle mSens95 | series |", "|---|---|---|---|"]
    lines += [f"| {split} | {cells(entry)} |" for split, entry in oracle["per_split"].items()]
    lines.append(f"| pooled | {cells(oracle['pooled'])} |")
    return lines


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
    if results.get("time_use"):
        lines += ["## Time use", "", *time_use_markdown(results["time_use"]), ""]
    if results.get("time_course_oracle"):
        lines += ["## Time-course oracle", "", *time_course_oracle_markdown(results["time_course_oracle"]), ""]
    if results.get("training_curve"):
        lines += ["## Held-out AUC over training", "", *training_curve_markdown(results["training_curve"]), ""]
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


_ABLATION_TITLES = (("none", "normal"), ("centre", "centre frame repeated"), ("reverse", "reversed"),
                    ("shuffle", "shuffled"))


def _auc_cell(cell: dict[str, Any]) -> str:
    """The AUC (mean ± std over runs); with one run, its patient-level bootstrap 95% CI."""
    text = format_mean_std(cell["AUC"])
    if cell["AUC"]["n"] == 1 and cell["AUC_ci95"] and cell["AUC_ci95"][0][0] is not None:
        low, high = cell["AUC_ci95"][0]
        text += f" ({low:.3f}-{high:.3f})"
    return text


POOLED_SCOPE = "Pooled out-of-fold AUC and sensitivity at 95% specificity of each final model"
TIME_USE_SCOPE = "Series AUC and sensitivity at 95% specificity of each predictions file"


def time_use_markdown(time_use: dict[str, Any], names: dict[str, str] | None = None, scope: str = POOLED_SCOPE) -> list[str]:
    """The time-use table (``results["time_use"]``) and what it means; ``names``: display names, in
    the order the rows should have (models it does not name follow); ``scope``: what was scored."""
    names = names or {}
    boot = time_use["bootstrap"]
    header = (["Model", "T"] + [f"AUC {title}" for _, title in _ABLATION_TITLES] + ["AUC lost (normal - centre)"]
              + [f"mSens95 {title}" for _, title in _ABLATION_TITLES])
    lines = [
        f"{scope} with its test clips as "
        "they are (normal), with every clip replaced by its centre frame repeated (no temporal context), "
        "reversed, and with its context frames shuffled. A model that uses the time course loses much AUC "
        "without it; one that does not is a single-frame model in disguise. A single-frame model (T = 1) has "
        "no context to remove: its normal figures are repeated in every column, unchanged by construction. "
        f"AUC: mean (± sample std over runs); with one run, its patient-level bootstrap 95% CI "
        f"({boot['resamples']} resamples, seed {boot['seed']}, paired over the columns).",
        "",
        "| " + " | ".join(header) + " |", "|---" * len(header) + "|",
    ]
    rows = time_use["models"]
    for model in [m for m in names if m in rows] + [m for m in rows if m not in names]:
        row = rows[model]
        modes = row["modes"]
        label = names.get(model, model) + (" (unchanged by construction)" if row["unchanged_by_construction"] else "")
        frames = "?" if row["num_frames"] is None else str(row["num_frames"])
        cells = ([label.replace("|", "/"), frames] + [_auc_cell(modes[m]) for m, _ in _ABLATION_TITLES]
                 + [format_mean_std(row["AUC_drop_centre"])]
                 + [format_mean_std(modes[m]["sens_at_95spec"]) for m, _ in _ABLATION_TITLES])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def training_curve_markdown(curves: dict[str, Any], image: str = "training_curve.png",
                            data: str = "training_curve.json") -> list[str]:
    """The AUC-over-training plot and the sentence that says what it is (and is not) for."""
    counts = ", ".join(f"{model}: {len(entry['lines'])} line(s), {len(entry['mean'])} point(s)"
                       for model, entry in curves.items())
    return [
        "Each job's series AUC on its own held-out fold, evaluated every `TEST.EVAL_PERIOD` iterations "
        "(`--curve-points`) and after the last one, from its `metrics.json` (also in TensorBoard as `dsa/AUC`): a "
        "thin line per fold and run, the mean over them bold. These evaluations are for this plot only, never "
        "for model selection: every figure of this report is that of `model_final` (the `model_best.pth` the "
        "trainer also keeps was chosen on the held-out fold and would be optimistic). "
        f"Data: `{data}` ({counts}).",
        "",
        f"![held-out AUC over training]({image})",
    ]
