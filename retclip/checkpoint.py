"""Checkpoint loading that refuses silent surprises.

fvcore's checkpointer (under detectron2's ``DetectionCheckpointer``) drops a tensor whose shape
differs from the model's with only a warning, asserts on a missing file and unpickles ``.pkl``
files. :class:`RetCLIPCheckpointer` keeps its format handling (``{"model": state_dict}``,
``module.`` prefixes) but raises on shape mismatches (naming the key and both shapes; intentional
ones, such as ``criterion.empty_weight`` when fine-tuning to another class count, are opted out
by name), raises ``FileNotFoundError`` / ``ValueError`` naming the file, and loads with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Dict, Iterable, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

logger = logging.getLogger(__name__)

#: Keys whose shape legitimately follows the training class count (opt-in for fine-tuning).
CLASS_COUNT_KEYS: Tuple[str, ...] = ("criterion.empty_weight",)


class RetCLIPCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that fails loudly on shape mismatches and unreadable files.

    Args:
        model: the model to load into / save.
        save_dir: where ``save`` writes.
        allow_shape_mismatch: state-dict keys that may differ in shape; they are skipped with a
            warning (fvcore's behaviour). Pass :data:`CLASS_COUNT_KEYS` to fine-tune to another
            number of classes.
        strict: also raise on missing or unexpected keys.
        checkpointables: optimizer, scheduler... as for ``DetectionCheckpointer``.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_shape_mismatch: Iterable[str] = (),
        strict: bool = False,
        **checkpointables: Any,
    ) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.allow_shape_mismatch = frozenset(allow_shape_mismatch)
        self.strict = strict
        #: missing/unexpected keys and skipped shape mismatches of the last ``load``.
        self.last_incompatible: Any = None

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Load ``path`` (a local ``.pth`` with a state dict or ``{"model": state_dict}``).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: not a checkpoint, a ``.pkl`` file, or a shape mismatch outside
                ``allow_shape_mismatch`` (message: key, checkpoint shape, model shape).
            KeyError: with ``strict``, missing or unexpected keys.
        """
        if path:
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".pkl"):
            raise ValueError(
                f"checkpoint {filename!r} is a pickle file; RetCLIP loads weights with "
                "torch.load(weights_only=True) only: convert it to a .pth state dict first"
            )
        try:
            loaded = torch.load(filename, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
            raise ValueError(f"{filename!r} is not a readable PyTorch checkpoint: {e}") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"checkpoint {filename!r} holds a {type(loaded).__name__}, not a dict")
        if "model" not in loaded:
            loaded = {"model": loaded}
        state = loaded["model"]
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) or hasattr(v, "shape") for v in state.values()
        ):
            raise ValueError(f"checkpoint {filename!r}: 'model' is not a state dict of tensors")
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        self._check_shapes(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        self.last_incompatible = incompatible
        if self.strict and (incompatible.missing_keys or incompatible.unexpected_keys):
            raise KeyError(
                f"checkpoint keys do not match the model: missing {incompatible.missing_keys}, "
                f"unexpected {incompatible.unexpected_keys}"
            )
        return incompatible

    def _check_shapes(self, state: Dict[str, Any]) -> None:
        model_state = self.model.state_dict()
        mismatches: List[str] = []
        for key, value in state.items():
            name = (
                key[len("module.") :]
                if key.startswith("module.") and key not in model_state
                else key
            )
            if name not in model_state or name in self.allow_shape_mismatch:
                continue
            ckpt_shape, model_shape = tuple(value.shape), tuple(model_state[name].shape)
            if ckpt_shape != model_shape:
                mismatches.append(f"{name}: checkpoint {ckpt_shape} vs model {model_shape}")
        if mismatches:
            raise ValueError(
                "checkpoint shapes do not match the model (pass allow_shape_mismatch=[keys] to "
                "skip intentional ones, e.g. CLASS_COUNT_KEYS for another class count): "
                + "; ".join(mismatches)
            )
