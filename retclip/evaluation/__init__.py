"""Evaluators: PQ, mask AP and mIoU from one inference pass, split into seen / unseen classes."""
from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

from .build import EVALUATOR_TYPES, build_evaluator
from .instance_seg import InstanceSegEvaluator
from .panoptic import PanopticEvaluator, panoptic_quality
from .seen_split import seen_classes_for
from .sem_seg import SemSegSplitEvaluator, miou_from_confusion

__all__ = [
    "EVALUATOR_TYPES",
    "InstanceSegEvaluator",
    "PanopticEvaluator",
    "SemSegSplitEvaluator",
    "build_evaluator",
    "miou_from_confusion",
    "panoptic_quality",
    "seen_classes_for",
]
