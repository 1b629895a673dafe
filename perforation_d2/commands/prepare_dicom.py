"""``python -m perforation_d2 prepare-dicom``: DICOM XA/XRF series -> PNG frames + cohort JSON.

::

    python -m perforation_d2 prepare-dicom --input PATH --out DIR [--boxes BOXES.json] [--salt SALT]
        [--cohort-name NAME] [--overwrite] [--strict] [--max-decoded-mib MIB]

The work is :func:`perforation_d2.data.dicom.importer.prepare_dicom` (outputs, pseudonyms, boxes
file: :mod:`perforation_d2.data.dicom.importer` and :mod:`perforation_d2.data.dicom.boxes`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import finite_float
from ..data.dicom import DEFAULT_MAX_DECODED_BYTES, SALT_ENV, SALT_FILE_ENV
from ..data.dicom.dataset import shown_path
from ..data.dicom.importer import prepare_dicom
from ..errors import DSAInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a DICOM file or a folder searched recursively")
    parser.add_argument("--out", required=True, help="output folder (cohort.json + frames/)")
    parser.add_argument("--boxes", help="JSON boxes file keyed by input file path or SeriesInstanceUID")
    parser.add_argument(
        "--salt",
        help=f"secret for the pseudonyms (default ${SALT_ENV}, else the per-user salt file ${SALT_FILE_ENV}, "
        "default ~/.config/perforation_d2/salt, created once)",
    )
    parser.add_argument("--cohort-name", default="dicom", help="the videos' 'cohort' value (default: dicom)")
    parser.add_argument("--overwrite", action="store_true", help="replace a previous prepare-dicom output in DIR")
    parser.add_argument(
        "--strict", action="store_true",
        help="fail (writing nothing) when any input file would be skipped, instead of importing the rest",
    )
    parser.add_argument(
        "--max-decoded-mib", type=finite_float(0, exclusive_minimum=True, what="a number of MiB"),
        default=DEFAULT_MAX_DECODED_BYTES / 2**20,
        help="refuse a series whose decoded pixels need more memory, checked from the headers before "
        "decoding (default: %(default).0f)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        summary = prepare_dicom(
            args.input, out, boxes_file=args.boxes, salt=args.salt, cohort_name=args.cohort_name,
            overwrite=args.overwrite, max_decoded_bytes=max(1, int(min(args.max_decoded_mib, 2.0**40) * 2**20)),
            strict=args.strict,
        )
    except DSAInputError as err:
        text = str(err).removesuffix(" (nothing was written).").rstrip(".")
        raise DSAInputError(f"{text}. Nothing was written to {shown_path(out)}.") from None
    print(
        f"prepare-dicom: wrote {summary.series} series ({summary.frames} frames, {summary.patients} patients) to "
        f"{shown_path(out / 'cohort.json')}"
        + (f"; skipped {len(summary.skipped)} file(s) (listed above and in cohort.json info.skipped)"
           if summary.skipped else "")
    )
    return 0
