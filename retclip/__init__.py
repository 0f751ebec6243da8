"""RetCLIP: open-vocabulary panoptic segmentation with retrieval augmentation.

Importing ``retclip`` is light and never imports detectron2, so ``retclip.retrieval`` and
``retclip.ensemble`` work where detectron2 is not installed. The detectron2-facing parts
(``retclip.config``, ``retclip.checkpoint``, ``retclip.modeling``, ``retclip.data``,
``retclip.evaluation``, ``retclip.engine``, ...) first apply :mod:`retclip.compat` and then
register their models, datasets and evaluators with detectron2 when they are imported.
"""
from typing import Any

__version__ = "0.1.0"
__all__ = ["add_retclip_config", "load_config", "__version__"]


def __getattr__(name: str) -> Any:
    """``retclip.add_retclip_config`` / ``retclip.load_config`` import detectron2 only when used."""
    if name in ("add_retclip_config", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'retclip' has no attribute {name!r}")
