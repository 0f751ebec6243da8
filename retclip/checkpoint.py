"""The one way RetCLIP loads model weights: strict, and never code from the file.

fvcore's checkpointer (under detectron2's ``DetectionCheckpointer``) drops a tensor whose shape
differs from the model's with only a warning, asserts on a missing file and unpickles ``.pkl``
files. :class:`RetCLIPCheckpointer` keeps its format handling (``{"model": state_dict}``,
``module.`` prefixes, optimizer and scheduler state for ``--resume``) but raises on shape
mismatches (naming the key and both shapes; intentional ones, such as ``criterion.empty_weight``
when fine-tuning to another class count, are opted out by name) and, with ``strict``, on missing
or unexpected keys. Files load with ``torch.load(weights_only=True)`` or safetensors only; a
``.pkl`` is refused with the command that converts it (``tools/convert_checkpoint.py``).
Every tool loads ``MODEL.WEIGHTS`` through :func:`load_model_weights` or this class.
"""
from __future__ import annotations

from retclip import compat as _compat

_compat.apply_all()  # before detectron2 is first imported

import logging
import os
import pickle
from typing import Any, Dict, Iterable, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from retclip.utils.cli import UserError

logger = logging.getLogger(__name__)

#: Keys whose shape legitimately follows the training class count (opt-in for fine-tuning).
CLASS_COUNT_KEYS: Tuple[str, ...] = ("criterion.empty_weight",)

#: How to turn a pickled checkpoint into one RetCLIP loads (printed when a ``.pkl`` is refused).
CONVERT_HINT = (
    "convert it once with `python tools/convert_checkpoint.py --allow-pickle {path} OUT.pth` "
    "(unpickling can run code stored in the file: only convert files you trust)"
)


class CheckpointError(UserError, ValueError):
    """A weights file that cannot be used as given: the message names the file, key and shapes."""


class RetCLIPCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that fails loudly on shape mismatches and unreadable files.

    Args:
        model: the model to load into / save.
        save_dir: where ``save`` writes.
        allow_shape_mismatch: state-dict keys that may differ in shape; they are skipped with a
            warning (fvcore's behaviour). Pass :data:`CLASS_COUNT_KEYS` to fine-tune to another
            number of classes.
        strict: also raise on missing keys (other than ``allow_shape_mismatch`` ones) or
            unexpected keys.
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
        self._path = ""

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Load ``path`` (a local ``.pth`` with a state dict or ``{"model": state_dict}``).

        Raises:
            FileNotFoundError: ``path`` does not exist.
            CheckpointError (a ValueError and a UserError): not a checkpoint, a ``.pkl`` file, a
                shape mismatch outside ``allow_shape_mismatch`` (message: key, checkpoint shape,
                model shape) or, with ``strict``, missing or unexpected keys.
        """
        self._path = path
        if path:
            local = self.path_manager.get_local_path(path)
            if not os.path.isfile(local):
                raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        return read_weights_file(filename)

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        self._check_shapes(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        self.last_incompatible = incompatible
        if self.strict and (incompatible.missing_keys or incompatible.unexpected_keys):
            missing = [k for k in incompatible.missing_keys if k not in self.allow_shape_mismatch]
            if missing or incompatible.unexpected_keys:
                raise CheckpointError(
                    f"checkpoint {self._path!r} does not match the model: missing keys {missing}, "
                    f"unexpected keys {incompatible.unexpected_keys}"
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
            raise CheckpointError(
                f"checkpoint {self._path!r}: shapes do not match the model (pass allow_shape_mismatch=[keys] to "
                "skip intentional ones, e.g. CLASS_COUNT_KEYS for another class count): "
                + "; ".join(mismatches)
            )


def read_weights_file(filename: str) -> Dict[str, Any]:
    """``{"model": state_dict, ...}`` from a ``.pth``/``.pt`` (weights_only) or ``.safetensors``.

    Raises:
        CheckpointError: a ``.pkl`` (with the conversion command), or a file that is not a
            readable checkpoint of tensors; the message names the file.
    """
    if filename.endswith(".pkl"):
        raise CheckpointError(
            f"checkpoint {filename!r} is a pickle file, which RetCLIP does not load (weights load "
            f"with torch.load(weights_only=True) or safetensors only): "
            + CONVERT_HINT.format(path=filename)
        )
    if filename.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return {"model": load_file(filename, device="cpu")}
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{filename!r} is not a readable safetensors file: {e}") from e
    try:
        loaded = torch.load(filename, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{filename!r} is not a readable PyTorch checkpoint (loaded with weights_only=True): "
            f"{' '.join(str(e).split())[:300]}"
        ) from e
    if not isinstance(loaded, dict):
        raise CheckpointError(f"checkpoint {filename!r} holds a {type(loaded).__name__}, not a dict")
    if "model" not in loaded:
        loaded = {"model": loaded}
    state = loaded["model"]
    if not isinstance(state, dict) or not all(
        isinstance(v, torch.Tensor) or hasattr(v, "shape") for v in state.values()
    ):
        raise CheckpointError(f"checkpoint {filename!r}: 'model' is not a state dict of tensors")
    return loaded


def load_model_weights(model: nn.Module, path: str, save_dir: str = "", resume: bool = False) -> Dict[str, Any]:
    """Load ``MODEL.WEIGHTS`` (or, with ``resume``, ``save_dir``'s last checkpoint) into ``model``
    for inference: every key present with the model's shape, nothing else in the file.

    The one call of ``tools/train_net.py --eval-only``, the demo and the score-cache writer, so a
    wrong checkpoint fails before any metric or picture is written. ``path`` "" keeps the model's
    weights (random ones), as detectron2 does.
    """
    checkpointer = RetCLIPCheckpointer(model, save_dir, strict=True)
    return checkpointer.resume_or_load(path, resume=resume)
