"""FC-CLIP's optimizer: AdamW (or SGD) with per-parameter groups and full-model gradient clipping.

Groups: every trainable parameter gets BASE_LR and WEIGHT_DECAY, except that parameters of
normalisation layers take WEIGHT_DECAY_NORM, those of ``nn.Embedding`` take WEIGHT_DECAY_EMBED,
and parameters under a ``backbone`` module have their learning rate scaled by
BACKBONE_MULTIPLIER. Frozen parameters (``requires_grad=False``, e.g. the CLIP backbone) are left
out. Plain ``nn.Parameter`` attributes (``level_embed``, ``logit_scale``) are not embeddings and
keep the normal weight decay, as in FC-CLIP.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Optional, Type

import torch
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["NORM_TYPES", "build_param_groups", "build_optimizer", "with_full_model_gradient_clipping"]

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    FrozenBatchNorm2d,
    NaiveSyncBatchNorm,
)


def build_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_embed: float = 0.0,
    backbone_multiplier: float = 1.0,
) -> List[Dict[str, Any]]:
    """One group per trainable parameter, with its own ``lr`` and ``weight_decay``.

    Returns:
        A list of ``{"params": [p], "lr": float, "weight_decay": float}``; shared parameters
        appear once.
    """
    groups: List[Dict[str, Any]] = []
    memo = set()
    for module_name, module in model.named_modules():
        in_backbone = "backbone" in module_name.split(".")
        for _, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in memo:
                continue
            memo.add(param)
            lr, wd = base_lr, weight_decay
            if in_backbone:
                lr = lr * backbone_multiplier
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            groups.append({"params": [param], "lr": lr, "weight_decay": wd})
    return groups


def with_full_model_gradient_clipping(optimizer_cls: Type[torch.optim.Optimizer], max_norm: float) -> type:
    """A subclass of ``optimizer_cls`` whose ``step`` first clips the gradient norm of all its
    parameters together to ``max_norm`` (detectron2 v0.6 only clips per parameter)."""

    class FullModelGradientClipping(optimizer_cls):  # type: ignore[misc,valid-type]
        def step(self, closure: Optional[Any] = None) -> Any:
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_cls.__name__}WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``cfg.SOLVER`` (OPTIMIZER "ADAMW" or "SGD") over FC-CLIP's parameter groups.

    Raises:
        ValueError: an unknown SOLVER.OPTIMIZER, or a model with no trainable parameter.
    """
    s = cfg.SOLVER
    groups = build_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_embed=s.WEIGHT_DECAY_EMBED,
        backbone_multiplier=s.BACKBONE_MULTIPLIER,
    )
    if not groups:
        raise ValueError("the model has no trainable parameter (is everything frozen?)")
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        cls: type = torch.optim.AdamW
        kwargs: Dict[str, Any] = {"lr": s.BASE_LR}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"lr": s.BASE_LR, "momentum": s.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER {s.OPTIMIZER!r} is not supported; use 'ADAMW' or 'SGD'")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer = with_full_model_gradient_clipping(cls, clip.CLIP_VALUE)(groups, **kwargs)
    else:
        optimizer = maybe_add_gradient_clipping(cfg, cls)(groups, **kwargs)
    n = sum(p.numel() for g in groups for p in g["params"])
    logger.info("Optimizer %s over %d parameter tensors (%d values)", type(optimizer).__name__, len(groups), n)
    return optimizer
