"""Training and evaluation behind ``tools/train_net.py``: optimizer groups, checks, the Trainer,
the one evaluation path."""
from .evaluate import evaluate_checkpoint, load_weights
from .optimizer import build_optimizer, build_param_groups, with_full_model_gradient_clipping
from .trainer import (
    Trainer,
    check_config,
    check_datasets_registered,
    format_metrics,
    resolve_device,
    resume_or_load,
    write_metrics,
)

__all__ = [
    "Trainer",
    "build_optimizer",
    "build_param_groups",
    "check_config",
    "check_datasets_registered",
    "evaluate_checkpoint",
    "format_metrics",
    "load_weights",
    "resolve_device",
    "resume_or_load",
    "with_full_model_gradient_clipping",
    "write_metrics",
]
