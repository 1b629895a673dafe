"""The demo's report folder: ``report.md`` with the cross-validated tables, plots and overlays."""

from __future__ import annotations

import argparse
import datetime as _dt
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..benchmarks.common import machine_description
from ..data.cohort import load_cohort, series_labels
from ..evaluation.predictions import read_predictions_json, surviving_detections
from ..evaluation.series_optimization import Detection
from ..experiments.report_text import (
    format_mean_std,
    time_course_oracle_markdown,
    time_use_markdown,
    training_curve_markdown,
)
from ..io.atomic import atomic_save_image, atomic_write_text
from ..io.json_io import read_json

GT_RGB = (40, 220, 60)
MODEL_RGB = [(255, 64, 32), (60, 140, 255), (255, 200, 0)]
MODEL_COLOUR_NAMES = ["red", "blue", "yellow"]


def _overlay(frame_path: Path, gt_boxes: list[list[float]], detections: list[Detection | None],
             names: list[str], scale: int = 3) -> Image.Image:
    """A frame enlarged ``scale`` times with the GT box(es) (green) and each model's surviving box."""
    grey = Image.open(frame_path).convert("L")
    image = grey.resize((grey.width * scale, grey.height * scale), Image.NEAREST).convert("RGB")
    draw = ImageDraw.Draw(image)
    for x, y, w, h in gt_boxes:
        draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=GT_RGB, width=2)
    for index, (name, det) in enumerate(zip(names, detections)):
        colour = MODEL_RGB[index % len(MODEL_RGB)]
        if det is not None:
            x, y, w, h = det.bbox
            draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=colour, width=2)
        text = f"{name}: {det.score:.2f}" if det is not None else f"{name}: none"
        draw.text((4, 4 + 12 * index), text, fill=colour)
    return image


def write_overlays(out: Path, cohort: dict, image_root: Path, names: list[str], predictions: list[Path],
                   max_series: int = 4) -> list[tuple[str, str]]:
    """Key-frame overlays of a few series of ``cohort`` (positives first); returns (png, caption)."""
    labels = series_labels(cohort)
    survivors = [surviving_detections(cohort, read_predictions_json(p), source=str(p)) for p in predictions]
    images_of = defaultdict(list)
    for image in sorted(cohort["images"], key=lambda im: im["frame_id"]):
        images_of[int(image["video_id"])].append(image)
    boxes_of = defaultdict(list)
    for ann in cohort["annotations"]:
        boxes_of[int(ann["image_id"])].append(ann["bbox"])
    positives = [v for v in sorted(images_of) if labels[v] == 1 and len(images_of[v]) > 1]
    negatives = [v for v in sorted(images_of) if labels[v] == 0 and len(images_of[v]) > 1]
    chosen = positives[: max_series - 1] + negatives[:1]
    rendered = []
    folder = out / "overlays"
    for vid in chosen:
        frames = images_of[vid]
        annotated = [i for i, im in enumerate(frames) if boxes_of[int(im["id"])]]
        # Key frame: the middle annotated frame of a positive; the last model's best frame otherwise.
        if annotated:
            key = annotated[len(annotated) // 2]
        else:
            scores = [d.score if d is not None else -1.0 for d in survivors[-1][vid]]
            key = int(np.argmax(scores))
        image = _overlay(image_root / frames[key]["file_name"], boxes_of[int(frames[key]["id"])],
                         [s[vid][key] for s in survivors], names)
        name = f"series{vid}_frame{key}.png"
        atomic_save_image(folder / name, image, overwrite=True)
        kind = "positive" if labels[vid] else "negative"
        rendered.append((f"overlays/{name}", f"series {vid} ({kind}), frame_id {key} of {len(frames)} frames"))
    return rendered


def temporal_verdict(compare: dict) -> str:
    """One sentence: does the temporal model (second) beat the single-frame one (first) on AUC?"""
    single, temporal = compare["models"][0], compare["models"][1]
    test = next(t for t in compare["delong"] if t["a"] == single["name"] and t["b"] == temporal["name"])
    better = (temporal["AUC"] or 0.0) > (single["AUC"] or 0.0)
    p_value = "n/a" if test["p_value"] is None else f"{test['p_value']:.3g}"
    return (f"{temporal['name']} {'beats' if better else 'does NOT beat'} {single['name']} on series AUC: "
            f"{temporal['AUC']:.3f} vs {single['AUC']:.3f} (DeLong p = {p_value}).")


def write_report(out: Path, cohort_json: Path, cv_dir: Path, models: list[tuple[str, str, str]],
                 predictions: dict[str, Path], compare_dir: Path, timings: list[tuple[str, float]],
                 total_seconds: float, args: argparse.Namespace) -> Path:
    """``out/report/report.md``: the cross-validated tables, the comparison, plots and overlays."""
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    compare = read_json(compare_dir / "compare.json", "comparison report")
    table = (compare_dir / "table.md").read_text()
    results = read_json(cv_dir / "report" / "results.json", "cross-validation results")
    for source, name in ((compare_dir / "roc_overlay.png", "roc_overlay.png"),
                         (cv_dir / "report" / "pr_overlay.png", "pr_overlay.png"),
                         (cv_dir / "report" / "training_curve.png", "training_curve.png"),
                         (cohort_json.parent / "preview.png", "cohort_preview.png")):
        if source.exists():
            shutil.copyfile(source, report_dir / name)
    keys = ["AUC", "sensitivity", "specificity", "sens_at_95spec", "precision_iou50", "recall_iou50",
            "precision_center", "recall_center", "AUPRC_center", "AP50_coco", "AP_center_coco"]
    per_model_rows = []
    for short, title, _config in models:
        cells = results["table1"][short]
        per_model_rows.append(f"| {title} | " + " | ".join(
            "-" if cells[k]["mean"] is None else f"{cells[k]['mean']:.3f}" for k in keys) + " |")
    folds = results["per_split_auc"]
    fold_rows = [f"| {split} | " + " | ".join(format_mean_std(row.get(short)) for short, _, _ in models) + " |"
                 for split, row in folds.items()]
    fold_rows.append("| mean (± std) over folds | " + " | ".join(
        format_mean_std(results["over_splits_auc"][short]) for short, _, _ in models) + " |")
    cohort = load_cohort(cohort_json, check_images=False)
    overlays = write_overlays(report_dir, cohort, cohort_json.parent, [t for _, t, _ in models],
                              [predictions[s] for s, _, _ in models])

    names = {short: title for short, title, _ in models}
    diagnostics = []
    if results.get("time_use"):
        diagnostics += ["## Time use: normal and time-blind AUCs", "", *time_use_markdown(results["time_use"], names), ""]
    if results.get("time_course_oracle"):
        diagnostics += ["## Time-course oracle", "", *time_course_oracle_markdown(results["time_course_oracle"]), ""]
    if results.get("training_curve"):
        diagnostics += ["## Held-out AUC over training", "", *training_curve_markdown(
            results["training_curve"], data="../cv/report/training_curve.json"), ""]
    legend = "; ".join(f"{MODEL_COLOUR_NAMES[i % len(MODEL_COLOUR_NAMES)]}: {title}"
                       for i, (_, title, _) in enumerate(models))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    verdict = temporal_verdict(compare)
    lines = [
        "# perforation_d2 demo report",
        "",
        f"Run {stamp} on {machine_description()}; {total_seconds / 60:.1f} minutes end to end.",
        f"Synthetic cohort: {args.patients} patients at {args.size} px (seed {args.seed}), split at patient "
        f"level into {args.folds} stratified folds and cross-validated: each model trained once per fold on the "
        f"other folds, and every series scored by the model that never saw its patient "
        f"({compare['num_patients']} patients, {compare['num_series']} series, {compare['num_positive_series']} "
        "positive), with series-level optimisation.",
        "",
        f"**{verdict}**",
        "",
        "## Series-level classification and localisation, pooled out-of-fold (Table 1 layout)",
        "",
        table,
        "## AUC per held-out fold",
        "",
        "Each fold's held-out series alone; the last row is the mean (± sample std) over folds.",
        "",
        "| fold | " + " | ".join(title for _, title, _ in models) + " |",
        "|" + "---|" * (len(models) + 1),
        *fold_rows,
        "",
        "## All metrics per model (pooled out-of-fold)",
        "",
        "| model | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 1),
        *per_model_rows,
        "",
        *diagnostics,
        "The cross-validation's own report, with every job: `../cv/report/report.md`.",
        "",
        "## Plots",
        "",
        "![ROC overlay](roc_overlay.png) ![PR overlay](pr_overlay.png)",
        "",
        "## Overlays",
        "",
        f"Green: ground truth; {legend} (the box that survives series optimisation on that frame, with its "
        "score; out-of-fold predictions).",
        "",
        *[f"![{caption}]({png})  \n{caption}\n" for png, caption in overlays],
        "## Steps",
        "",
        "| step | seconds |",
        "|---|---|",
        *[f"| {title} | {seconds:.0f} |" for title, seconds in timings],
        "",
        "Commands and their output: `../demo.log`. Models: " + ", ".join(f"`{c}`" for _, _, c in models) + ".",
    ]
    if (report_dir / "cohort_preview.png").exists():
        lines += ["", "## The synthetic cohort", "", "![cohort preview](cohort_preview.png)"]
    path = report_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n", overwrite=True)
    return path

