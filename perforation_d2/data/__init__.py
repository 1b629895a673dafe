"""The DSA cohort data layer: loading, validation, registration, clips and splits.

Importing this package registers the cohorts found under ``$DETECTRON2_DATASETS`` (default
``./datasets``, layout ``<name>/cohort.json``), like Detectron2's builtin datasets, validating
their JSON but not stat-ing every frame file, so that the import stays cheap. The command
modules (``synth``, ``prepare-dicom``, ``validate``, ``split``) are imported only when they run.
"""

from .clip_transforms import ClipAffineTransform, DSAClipAugmentation
from .cohort import cohort_problems, load_cohort, series_labels
from .mapper import DSAClipMapper
from .register import (
    cohort_dataset_dicts,
    register_cohort_dir,
    register_cohorts_under,
    register_dsa_cohort,
    register_dsa_splits,
)

__all__ = [
    "ClipAffineTransform",
    "DSAClipAugmentation",
    "DSAClipMapper",
    "cohort_dataset_dicts",
    "cohort_problems",
    "load_cohort",
    "register_cohort_dir",
    "register_cohorts_under",
    "register_dsa_cohort",
    "register_dsa_splits",
    "series_labels",
]

register_cohorts_under(check_images=False)
