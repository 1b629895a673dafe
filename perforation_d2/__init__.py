"""perforation_d2: spatio-temporal detection of intracranial vessel perforations in DSA series.

Importing the package registers every component with Detectron2's registries (datasets found
under ``$DETECTRON2_DATASETS``, the temporal backbones, meta-architectures, box heads and
evaluator), like Detectron2's own ``projects/`` packages.
"""

import warnings

# Detectron2 0.7 scripts a few helpers with torch.jit.script at import, which torch >= 2.10
# deprecates with one FutureWarning per call; it says nothing actionable to our users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

from . import data, evaluation, modeling  # noqa: E402
from .config import add_perforation_config  # noqa: E402

__all__ = ["add_perforation_config", "data", "evaluation", "modeling"]
__version__ = "0.1.0"
