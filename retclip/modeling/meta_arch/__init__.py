"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY."""

from .fcclip import FCCLIP

__all__ = ["FCCLIP"]
