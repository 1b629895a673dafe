"""The DSA cohort data layer: loading, validation, registration, clips and splits.

Importing this package registers the names of the cohorts found under ``$DETECTRON2_DATASETS``
(default ``./datasets``, layout ``<name>/cohort.json``), like Detectron2's builtin datasets, and
lazily: a cohort's JSON is read and validated on the first ``DatasetCatalog.get`` of one of its
names, so the import stays cheap in every command and DDP worker, and a broken cohort only logs a
warning naming it.
"""

import logging

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

try:
    register_cohorts_under(check_images=False)
except Exception as _err:  # the import must never fail because of a dataset folder
    logging.getLogger(__name__).warning(f"perforation_d2: cohorts under $DETECTRON2_DATASETS not registered: {_err}")
