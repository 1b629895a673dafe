"""Loading and validating a cohort: the COCO-video JSON of SPEC section 1.

``load_cohort`` reads the JSON, runs every check of SPEC section 1 up front and returns the raw
dict unchanged, so that everything downstream (registration, splits, evaluation) can index it
without defensive code. ``cohort_problems`` lists *every* problem, each naming the offending ids,
so that a user fixes a broken cohort in one pass instead of one error per run.

Frame files are given relative to the image root, which defaults to the folder of the JSON.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DSAInputError, format_problems

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

# Required fields and their JSON types ("int" excludes booleans; "pos" = positive int).
_VIDEO_FIELDS = {
    "id": "int", "name": "str", "width": "pos", "height": "pos",
    "patient_id": "str", "cohort": "str", "num_frames": "int",
}
_IMAGE_FIELDS = {
    "id": "int", "file_name": "str", "video_id": "int", "frame_id": "int",
    "width": "pos", "height": "pos",
}
_ANNOTATION_FIELDS = {"id": "int", "image_id": "int", "bbox": "box"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == "int":
        return _is_int(value)
    if kind == "pos":
        return _is_int(value) and value > 0
    if kind == "str":
        return isinstance(value, str) and value != ""
    # "box": four finite numbers
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


_KIND_TEXT = {
    "int": "an integer", "pos": "a positive integer", "str": "a non-empty string",
    "box": "a list of four finite numbers [x, y, w, h]",
}


def _number_ok(value: Any) -> bool:
    kind = type(value)
    return kind is int or (kind is float and value - value == 0)  # finite: inf - inf and nan are nan


# Fast whole-entry checks (``type(v) is int`` also rejects booleans); only an entry that fails
# one goes through the field-by-field check that words the problem. This keeps a 25,000-frame
# cohort well under a second.
def _video_ok(v: dict) -> bool:
    return (type(v["id"]) is int and type(v["name"]) is str and v["name"] != ""
            and type(v["width"]) is int and v["width"] > 0 and type(v["height"]) is int and v["height"] > 0
            and type(v["patient_id"]) is str and v["patient_id"] != "" and type(v["cohort"]) is str
            and v["cohort"] != "" and type(v["num_frames"]) is int)


def _image_ok(i: dict) -> bool:
    return (type(i["id"]) is int and type(i["file_name"]) is str and i["file_name"] != ""
            and type(i["video_id"]) is int and type(i["frame_id"]) is int
            and type(i["width"]) is int and i["width"] > 0 and type(i["height"]) is int and i["height"] > 0)


def _annotation_ok(a: dict) -> bool:
    box = a["bbox"]
    return (type(a["id"]) is int and type(a["image_id"]) is int and type(box) is list and len(box) == 4
            and _number_ok(box[0]) and _number_ok(box[1]) and _number_ok(box[2]) and _number_ok(box[3]))


_FAST_CHECKS = {"video": _video_ok, "image": _image_ok, "annotation": _annotation_ok}


def _check_fields(entry: Any, fields: dict[str, str], what: str, index: int, problems: list[str]) -> bool:
    """Append a problem per missing or mistyped field; True when the entry is fully usable."""
    if type(entry) is dict:
        try:
            if _FAST_CHECKS[what](entry):
                return True
        except (KeyError, TypeError):
            pass
    if not isinstance(entry, dict):
        problems.append(f"{what} #{index} is not a JSON object")
        return False
    ident = entry.get("id")
    label = f"{what} id {ident}" if _is_int(ident) else f"{what} #{index}"
    ok = True
    for key, kind in fields.items():
        if key not in entry:
            problems.append(f"{label}: missing key '{key}'")
            ok = False
        elif not _type_ok(entry[key], kind):
            problems.append(f"{label}: '{key}' must be {_KIND_TEXT[kind]}, got {entry[key]!r}")
            ok = False
    return ok


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
    """Parse the cohort file; an unreadable or non-JSON file raises :class:`DSAInputError`."""
    try:
        with open(json_file, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DSAInputError(f"{json_file}: the cohort file does not exist.") from None
    except IsADirectoryError:
        raise DSAInputError(
            f"{json_file}: is a folder, not a cohort JSON file (pass the folder's cohort.json)."
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DSAInputError(f"{json_file}: cannot read the cohort file ({err}).") from None
    except json.JSONDecodeError as err:
        raise DSAInputError(
            f"{json_file}: is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "a cohort is a COCO-video JSON file (SPEC section 1)."
        ) from None


def default_image_root(json_file: PathLike) -> Path:
    return Path(json_file).resolve().parent


def cohort_problems(
    cohort: Any,
    json_file: PathLike,
    image_root: PathLike | None = None,
    check_images: bool = True,
) -> list[str]:
    """Every problem of ``cohort`` (as parsed from ``json_file``), each naming the offending ids.

    An empty list means the cohort is valid. ``image_root`` defaults to the JSON's folder;
    ``check_images=False`` skips the existence check of the frame files.
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
        and any(isinstance(c, dict) and c.get("id") == 1 for c in categories)
    ):
        problems.append("'categories' must list {\"id\": 1, \"name\": \"perforation\"}")

    # Entries with a usable id stay known even when another field is bad, so that one bad
    # field is reported once, not again as "unknown id" on every frame that refers to it.
    videos: dict[int, dict] = {}
    complete_videos: set[int] = set()
    if not sections["videos"] and "videos" in cohort:
        problems.append("the cohort is empty: 'videos' lists no series")
    for index, video in enumerate(sections["videos"]):
        complete = _check_fields(video, _VIDEO_FIELDS, "video", index, problems)
        vid = video.get("id") if isinstance(video, dict) else None
        if not _is_int(vid):
            continue
        if vid in videos:
            problems.append(f"duplicate video id {vid}")
            continue
        videos[vid] = video
        if not complete:
            continue
        complete_videos.add(vid)
        label = video.get("label")
        if label is not None and (not _is_int(label) or label not in (0, 1)):
            problems.append(f"video id {vid}: 'label' must be 0 or 1 when present, got {label!r}")
        frame_time = video.get("frame_time_ms")
        if frame_time is not None and not (
            isinstance(frame_time, (int, float)) and not isinstance(frame_time, bool)
            and math.isfinite(frame_time) and frame_time > 0
        ):
            problems.append(f"video id {vid}: 'frame_time_ms' must be a positive number or null, got {frame_time!r}")

    root = Path(image_root) if image_root is not None else default_image_root(json_file)
    images: dict[int, dict] = {}
    complete_images: set[int] = set()
    frames_of: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    missing_files: list[str] = []
    for index, image in enumerate(sections["images"]):
        complete = _check_fields(image, _IMAGE_FIELDS, "image", index, problems)
        iid = image.get("id") if isinstance(image, dict) else None
        if not _is_int(iid):
            continue
        if iid in images:
            problems.append(f"duplicate image id {iid}")
            continue
        images[iid] = image
        if not complete:
            continue
        complete_images.add(iid)
        vid = image["video_id"]
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
        if check_images and not os.path.exists(os.path.join(root, image["file_name"])):
            missing_files.append(f"image id {iid} (video {vid}, frame {image['frame_id']}): missing image "
                                 f"file {os.path.join(root, image['file_name'])}")

    for vid, video in videos.items():
        frames = frames_of.get(vid, {})
        if not frames:
            problems.append(f"video id {vid}: has no frames (no image refers to it)")
            continue
        frame_problem = False
        for frame_id, ids in sorted(frames.items()):
            if len(ids) > 1:
                problems.append(f"video id {vid}: duplicate frame_id {frame_id} (image ids {_id_list(ids)})")
                frame_problem = True
        count = len(frames)
        if min(frames) != 0 or max(frames) != count - 1:
            gaps = sorted(set(range(max(max(frames), count - 1) + 1)) - set(frames))
            negative = sorted(f for f in frames if f < 0)
            detail = f"missing frame_id {_id_list(gaps)}" if gaps else ""
            if negative:
                detail += ("; " if detail else "") + f"negative frame_id {_id_list(negative)}"
            problems.append(f"video id {vid}: frame_id not contiguous from 0 ({detail})")
            frame_problem = True
        num_images = sum(len(ids) for ids in frames.values())
        # A wrong num_frames is only worth a line of its own when the frames themselves are fine.
        if vid in complete_videos and not frame_problem and video["num_frames"] != num_images:
            problems.append(f"video id {vid}: num_frames is {video['num_frames']} but it has {num_images} frames")

    annotation_ids: set[int] = set()
    boxes_of: dict[int, int] = defaultdict(int)
    for index, ann in enumerate(sections["annotations"]):
        if not _check_fields(ann, _ANNOTATION_FIELDS, "annotation", index, problems):
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
        if "video_id" in ann and ann["video_id"] != vid and vid in videos:
            known = "" if ann["video_id"] in videos else " (an unknown video id)"
            problems.append(
                f"annotation id {aid}: video_id {ann['video_id']!r}{known} disagrees with its image "
                f"{iid}, which belongs to video {vid}"
            )
        if ann.get("category_id", 1) != 1:
            problems.append(f"annotation id {aid}: category_id must be 1 (perforation), got {ann['category_id']!r}")
        if ann.get("iscrowd", 0) != 0:
            problems.append(f"annotation id {aid}: iscrowd must be 0, got {ann['iscrowd']!r}")
        x, y, w, h = ann["bbox"]
        if w <= 0 or h <= 0:
            problems.append(f"annotation id {aid} (image {iid}): non-positive box size {w}x{h}")
        elif x < 0 or y < 0 or x + w > image["width"] or y + h > image["height"]:
            problems.append(
                f"annotation id {aid} (image {iid}): box [{x}, {y}, {w}, {h}] lies outside the "
                f"{image['width']}x{image['height']} image"
            )
        boxes_of[vid] += 1

    for vid, video in videos.items():
        if vid in complete_videos and video.get("label") == 0 and boxes_of.get(vid):
            # Legal (SPEC section 1: the label wins); worth a note since it is usually a slip.
            logger.warning(f"{json_file}: video id {vid} has label 0 but {boxes_of[vid]} box(es); it counts as negative")
    return problems + missing_files


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
