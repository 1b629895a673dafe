"""Loading and validating a cohort: the COCO-video JSON of SPEC section 1.

``load_cohort`` reads the JSON, runs every check of SPEC section 1 up front and returns the raw
dict unchanged, so that everything downstream (registration, splits, evaluation) can index it
without defensive code. ``cohort_problems`` lists *every* problem, each naming the offending ids,
so that a user fixes a broken cohort in one pass instead of one error per run. The field-level
schema of one entry lives in :mod:`.schema`; the cross-references between entries are checked here.

Frame files are given relative to the image root, which defaults to the folder of the JSON.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DSAInputError, format_problems
from ..io.json_io import read_json
from .schema import FrameFileChecker, check_entry, file_name_problem, is_int, shown

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def _id_list(ids: list[int], limit: int = 10) -> str:
    ids = sorted(ids)
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around allocation-heavy loops over a big parsed cohort.

    Building tens of thousands of small objects triggers repeated collections that each walk
    the whole cohort (which holds no reference cycles); pausing them halves the load time.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_cohort_json(json_file: PathLike) -> Any:
    """Parse the cohort file; a missing, unreadable or non-JSON file raises :class:`DSAInputError`."""
    return read_json(json_file, "cohort file", "A cohort is a COCO-video JSON file with 'videos', 'images' and 'annotations'.")


def default_image_root(json_file: PathLike) -> Path:
    return Path(json_file).resolve().parent


def _missing_frame_ids(present: list[int], count: int, limit: int = 10) -> tuple[list[int], int]:
    """The first ``limit`` missing frame numbers of ``0 .. max(present[-1], count - 1)`` and how many
    are missing in all, from the sorted non-negative ``present``: linear in ``len(present)``
    however large the numbers are (never a ``range`` up to the largest)."""
    top = max(present[-1] if present else -1, count - 1)
    missing_total = top + 1 - len(present)
    first: list[int] = []
    expected = 0
    for frame_id in [*present, top + 1]:
        while expected < frame_id and len(first) < limit:
            first.append(expected)
            expected += 1
        if len(first) >= limit:
            break
        expected = frame_id + 1
    return first, missing_total


def _frame_list(first: list[int], total: int) -> str:
    text = ", ".join(str(i) for i in first)
    return text + (f", ... ({total} in all)" if total > len(first) else "")


def _unique_entries(section: list, what: str, by_id: dict[int, dict], problems: list[str]) -> Iterator[tuple[int, dict, bool]]:
    """``(id, entry, complete)`` for each entry of ``section`` with a usable id not seen before, which
    is kept in ``by_id`` even when another field is bad: one bad field is then reported once, not
    again as "unknown id" on every entry that refers to it."""
    for index, entry in enumerate(section):
        complete = check_entry(entry, what, index, problems)
        ident = entry.get("id") if isinstance(entry, dict) else None
        if not is_int(ident):
            continue
        if ident in by_id:
            problems.append(f"duplicate {what} id {ident}")
            continue
        by_id[ident] = entry
        yield ident, entry, complete


def _check_frames(vid: int, video: dict, frames: dict[int, list[int]], complete: bool, problems: list[str]) -> None:
    """Frame numbering of one video: unique, contiguous from 0, as many as ``num_frames`` says."""
    if not frames:
        problems.append(f"video id {vid}: has no frames (no image refers to it)")
        return
    frame_problem = False
    for frame_id, ids in sorted(frames.items()):
        if len(ids) > 1:
            problems.append(f"video id {vid}: duplicate frame_id {frame_id} (image ids {_id_list(ids)})")
            frame_problem = True
    count = len(frames)
    if min(frames) != 0 or max(frames) != count - 1:
        present = sorted(f for f in frames if f >= 0)
        negative = sorted(f for f in frames if f < 0)
        first, total = _missing_frame_ids(present, count)
        detail = f"missing frame_id {_frame_list(first, total)}" if total else ""
        if negative:
            detail += ("; " if detail else "") + f"negative frame_id {_id_list(negative)}"
        problems.append(f"video id {vid}: frame_id not contiguous from 0 ({detail})")
        frame_problem = True
    num_images = sum(len(ids) for ids in frames.values())
    # A wrong num_frames is only worth a line of its own when the frames themselves are fine.
    if complete and not frame_problem and video["num_frames"] != num_images:
        problems.append(f"video id {vid}: num_frames is {video['num_frames']} but it has {num_images} frames")


def cohort_problems(
    cohort: Any,
    json_file: PathLike,
    image_root: PathLike | None = None,
    check_images: bool = True,
) -> list[str]:
    """Every problem of ``cohort`` (as parsed from ``json_file``), each naming the offending ids.

    An empty list means the cohort is valid. ``image_root`` defaults to the JSON's folder;
    ``check_images=False`` skips the checks that stat the frame files (that each exists, is a file
    and lies inside the image root, also through symbolic links). Time and memory are linear in
    the size of the cohort, whatever the numbers in it say.
    """
    if not isinstance(cohort, dict):
        return [f"the top level must be a JSON object with 'videos', 'images' and 'annotations', "
                f"got {type(cohort).__name__}"]
    problems: list[str] = []
    sections = {}
    for key in ("videos", "images", "annotations"):
        value = cohort.get(key)
        if value is None:
            problems.append(f"missing key '{key}'")
            value = []
        elif not isinstance(value, list):
            problems.append(f"'{key}' must be a list, got {type(value).__name__}")
            value = []
        sections[key] = value
    categories = cohort.get("categories")
    if categories is not None and not (
        isinstance(categories, list)
        and any(isinstance(c, dict) and is_int(c.get("id")) and c["id"] == 1 for c in categories)
    ):
        problems.append("'categories' must list {\"id\": 1, \"name\": \"perforation\"}")

    if not sections["videos"] and "videos" in cohort:
        problems.append("the cohort is empty: 'videos' lists no series")
    videos: dict[int, dict] = {}
    complete_videos = {vid for vid, _, complete in _unique_entries(sections["videos"], "video", videos, problems)
                       if complete}

    root = Path(image_root) if image_root is not None else default_image_root(json_file)
    files = FrameFileChecker(root) if check_images else None
    images: dict[int, dict] = {}
    complete_images: set[int] = set()
    frames_of: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    file_problems: list[str] = []
    for iid, image, complete in _unique_entries(sections["images"], "image", images, problems):
        if not complete:
            continue
        vid = image["video_id"]
        bad_name = file_name_problem(image["file_name"])
        if bad_name:
            problems.append(f"image id {iid}: {bad_name}")
        else:
            complete_images.add(iid)
        video = videos.get(vid)
        if video is None:
            problems.append(f"image id {iid}: unknown video_id {vid}")
        else:
            frames_of[vid][image["frame_id"]].append(iid)
            if vid in complete_videos and (image["width"], image["height"]) != (video["width"], video["height"]):
                problems.append(
                    f"image id {iid} (video {vid}): size {image['width']}x{image['height']} differs "
                    f"from its video's {video['width']}x{video['height']}"
                )
        if files is not None and not bad_name:
            problem = files.problem(image["file_name"])
            if problem:
                file_problems.append(f"image id {iid} (video {vid}, frame {image['frame_id']}): {problem}")

    for vid, video in videos.items():
        _check_frames(vid, video, frames_of.get(vid, {}), vid in complete_videos, problems)

    boxes_of = _check_annotations(sections["annotations"], images, complete_images, videos, problems)
    for vid, video in videos.items():
        if vid in complete_videos and video.get("label") == 0 and boxes_of.get(vid):
            # Legal (SPEC section 1: the label wins); worth a note since it is usually a slip.
            logger.warning(f"{json_file}: video id {vid} has label 0 but {boxes_of[vid]} box(es); it counts as negative")
    return problems + file_problems


def _check_annotations(
    section: list, images: dict[int, dict], complete_images: set[int], videos: dict[int, dict], problems: list[str]
) -> dict[int, int]:
    """Check every annotation against its image; returns the number of boxes per video."""
    annotation_ids: set[int] = set()
    boxes_of: dict[int, int] = defaultdict(int)
    for index, ann in enumerate(section):
        if not check_entry(ann, "annotation", index, problems):
            continue
        aid, iid = ann["id"], ann["image_id"]
        if aid in annotation_ids:
            problems.append(f"duplicate annotation id {aid}")
            continue
        annotation_ids.add(aid)
        image = images.get(iid)
        if image is None:
            problems.append(f"annotation id {aid}: unknown image_id {iid}")
            continue
        if iid not in complete_images:
            continue
        vid = image["video_id"]
        claimed = ann.get("video_id")
        if is_int(claimed) and claimed != vid and vid in videos:
            known = "" if claimed in videos else " (an unknown video id)"
            problems.append(
                f"annotation id {aid}: video_id {claimed}{known} disagrees with its image "
                f"{iid}, which belongs to video {vid}"
            )
        category = ann.get("category_id", 1)
        if not (is_int(category) and category == 1):
            problems.append(f"annotation id {aid}: category_id must be 1 (perforation), got {shown(category)}")
        crowd = ann.get("iscrowd", 0)
        if not (is_int(crowd) and crowd == 0):
            problems.append(f"annotation id {aid}: iscrowd must be 0, got {shown(crowd)}")
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            problems.append(f"annotation id {aid} (image {iid}): non-positive box size {w}x{h}")
        elif x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]:
            problems.append(
                f"annotation id {aid} (image {iid}): box [{x}, {y}, {w}, {h}] lies outside the "
                f"{image['width']}x{image['height']} image"
            )
        boxes_of[vid] += 1
    return boxes_of


def load_cohort(json_file: PathLike, image_root: PathLike | None = None, check_images: bool = True) -> dict:
    """The validated raw cohort dict; raises :class:`DSAInputError` listing every problem."""
    with gc_paused():
        cohort = read_cohort_json(json_file)
        problems = cohort_problems(cohort, json_file, image_root, check_images)
    if problems:
        raise DSAInputError(format_problems(str(json_file), problems))
    return cohort


def series_labels(cohort: dict) -> dict[int, int]:
    """``{video_id: 0 | 1}``: the video's ``label`` when present, else 1 when any frame has a box."""
    frame_video = {image["id"]: image["video_id"] for image in cohort["images"]}
    boxed = {frame_video[ann["image_id"]] for ann in cohort["annotations"]}
    labels = {}
    for video in cohort["videos"]:
        label = video.get("label")
        labels[video["id"]] = int(label) if label is not None else int(video["id"] in boxed)
    return labels


def frames_by_video(cohort: dict) -> dict[int, list[dict]]:
    """``{video_id: [image, ...]}`` in frame order, for every video of a validated cohort."""
    frames: dict[int, list[dict]] = {video["id"]: [] for video in cohort["videos"]}
    for image in cohort["images"]:
        frames[image["video_id"]].append(image)
    for images in frames.values():
        images.sort(key=lambda image: image["frame_id"])
    return frames


def cohort_counts(cohort: dict) -> dict[str, int]:
    """Headline counts of a validated cohort (patients, series, frames, boxes, positive series)."""
    labels = series_labels(cohort)
    return {
        "patients": len({video["patient_id"] for video in cohort["videos"]}),
        "series": len(cohort["videos"]),
        "frames": len(cohort["images"]),
        "boxes": len(cohort["annotations"]),
        "positive_series": sum(labels.values()),
        "cohorts": len({video["cohort"] for video in cohort["videos"]}),
    }
