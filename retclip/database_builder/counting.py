"""Counts of model forwards, taken by forward hooks on the modules that do the per-image work,
so the "one image forward per model per image" rule is measured rather than assumed."""

from __future__ import annotations

import time
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
        self.seconds: Counter = Counter()
        self._started: Dict[str, float] = {}
        self._handles: List = []

    def watch(self, name: str, module: nn.Module) -> None:
        """Count forwards of ``module`` under ``name``."""

        def pre_hook(mod: nn.Module, args: tuple) -> None:
            self._started[name] = time.perf_counter()

        def hook(mod: nn.Module, args: tuple, output) -> None:
            self.seconds[name] += time.perf_counter() - self._started.pop(name, time.perf_counter())
            self.calls[name] += 1
            first = args[0] if args else None
            has_batch = hasattr(first, "shape") and len(first.shape)
            self.rows[name] += int(first.shape[0]) if has_batch else 1

        # The timer starts after other pre-hooks (e.g. the shared-backbone slicing) have run.
        self._handles.append(module.register_forward_pre_hook(pre_hook))
        self._handles.append(module.register_forward_hook(hook))

    def snapshot(self) -> Dict[str, int]:
        """Rows per watched module so far (images for image encoders, prompts for text ones)."""
        return dict(self.rows)

    def calls_snapshot(self) -> Dict[str, int]:
        """Calls per watched module so far (a batched forward of several images is one call)."""
        return dict(self.calls)

    def seconds_snapshot(self) -> Dict[str, float]:
        """Seconds spent inside each watched module so far."""
        return dict(self.seconds)

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
