"""perforation_d2: spatio-temporal detection of intracranial vessel perforations in DSA series.

Importing the package registers every component with Detectron2's registries (datasets found
under ``$DETECTRON2_DATASETS``, the temporal backbones, meta-architectures, box heads and
evaluator), like Detectron2's own ``projects/`` packages.
"""

from . import data, evaluation, modeling
from .config import add_perforation_config

__all__ = ["add_perforation_config", "data", "evaluation", "modeling"]
__version__ = "0.1.0"
