"""RetCLIP: open-vocabulary panoptic segmentation with retrieval augmentation.

Importing ``retclip`` first applies the compatibility steps of :mod:`retclip.compat` (they must
run before detectron2 is imported), then imports the modules whose job is to register models,
datasets and evaluators with detectron2's registries.
"""
from . import compat

compat.apply_all()

from .config import add_retclip_config  # noqa: E402

__version__ = "0.1.0"
__all__ = ["add_retclip_config", "compat", "__version__"]

# Registration imports (each module registers its parts with detectron2 on import).
from . import _register  # noqa: E402,F401
