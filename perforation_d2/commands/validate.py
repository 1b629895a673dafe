"""``python -m perforation_d2 validate COHORT.json``: every check of a cohort, every problem listed.

Exit status: 0 when the cohort is clean (its counts are printed), 1 when problems were found (one
per line, then a summary), 2 when the file cannot be read or is not JSON (via the CLI's
:class:`~perforation_d2.errors.DSAInputError` handling).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.cohort import cohort_counts, cohort_problems, default_image_root, read_cohort_json
from ..errors import DSAInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cohort", metavar="COHORT.json", help="the cohort file (COCO-video JSON)")
    parser.add_argument(
        "--image-root", default=None, metavar="DIR",
        help="folder the frames' file_name are relative to (default: the JSON's folder)",
    )
    parser.add_argument("--skip-images", action="store_true", help="do not check that the frame files exist")


def run(args: argparse.Namespace) -> int:
    if args.image_root is not None and not Path(args.image_root).is_dir():
        raise DSAInputError(f"{args.image_root}: --image-root must be an existing folder.")
    cohort = read_cohort_json(args.cohort)
    image_root = args.image_root or default_image_root(args.cohort)
    problems = cohort_problems(cohort, args.cohort, image_root, check_images=not args.skip_images)
    if problems:
        for problem in problems:
            print(problem)
        plural = "problem" if len(problems) == 1 else "problems"
        print(f"{args.cohort}: INVALID, {len(problems)} {plural} (image root {image_root})", file=sys.stderr)
        return 1
    counts = cohort_counts(cohort)
    print(
        f"{args.cohort}: OK: {counts['patients']} patients, {counts['series']} series "
        f"({counts['positive_series']} positive), {counts['frames']} frames, {counts['boxes']} boxes, "
        f"{counts['cohorts']} cohort(s); image root {image_root}"
    )
    return 0
