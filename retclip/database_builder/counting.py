"""Counts of model forwards, taken by forward hooks on the modules that do the per-image work,
so the "one image forward per model per image" rule is measured rather than assumed."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List

from torch import nn

__all__ = ["ForwardCounter"]


class ForwardCounter:
    """Counts calls and input rows (images or prompts) of watched modules.

    ``images[name]`` adds the batch size of each call's first input *as the module received it*
    (after any forward pre-hook), so work skipped by a shared-feature hook is not counted.
    """

    def __init__(self) -> None:
        self.calls: Counter = Counter()
        self.rows: Counter = Counter()
        self._handles: List = []

    def watch(self, name: str, module: nn.Module) -> None:
        """Count forwards of ``module`` under ``name``."""

        def hook(mod: nn.Module, args: tuple, output) -> None:
            self.calls[name] += 1
            first = args[0] if args else None
            self.rows[name] += (
                int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 1
            )

        self._handles.append(module.register_forward_hook(hook))

    def snapshot(self) -> Dict[str, int]:
        """Rows per watched module so far (images for image encoders, prompts for text ones)."""
        return dict(self.rows)

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
