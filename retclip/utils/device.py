"""Where the tools run: one CPU fallback and one GPU-count check for all of them.

Every tool (training, evaluation, demo, database builds, score caches) calls
:func:`resolve_device` on its config before building a model, so a machine without CUDA runs on
CPU the same way everywhere and says so once per process; and :func:`check_num_gpus` before
starting workers, so ``--num-gpus 8`` on a machine with fewer GPUs stops at once with exit code 2
instead of after minutes of worker start-up. Imports only torch.
"""
from __future__ import annotations

import logging
from typing import Any, Set

import torch

from .cli import UserError

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "check_num_gpus", "cuda_device_count"]

_said: Set[str] = set()  # messages already logged in this process ("says so once")


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        logger.warning(message)


def cuda_device_count() -> int:
    """Usable CUDA devices (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(cfg: Any) -> None:
    """On a machine without CUDA: MODEL.DEVICE -> cpu (said once per process), AMP off (warned),
    CPU_THREADS applied. cfg must be unfrozen; with CUDA it is left as it is."""
    if torch.cuda.is_available():
        return
    if cfg.get("CPU_THREADS", 0) > 0:
        torch.set_num_threads(cfg.CPU_THREADS)
        logger.info("CPU run: %d torch thread(s) (CPU_THREADS)", cfg.CPU_THREADS)
    if str(cfg.MODEL.DEVICE).startswith("cuda"):
        _say_once(f"no CUDA GPU on this machine: running on CPU (MODEL.DEVICE {cfg.MODEL.DEVICE} -> cpu)")
        cfg.MODEL.DEVICE = "cpu"
    amp = cfg.get("SOLVER", {}).get("AMP", {})
    if amp.get("ENABLED", False):
        logger.warning("SOLVER.AMP.ENABLED is ignored on CPU (AMP needs CUDA): training in fp32")
        cfg.SOLVER.AMP.ENABLED = False


def check_num_gpus(num_gpus: int, *, cpu_processes: bool = False) -> None:
    """Refuse a ``--num-gpus`` this machine cannot honour, before any worker starts.

    Args:
        num_gpus: processes per machine asked for (``--num-gpus``); 0 means one CPU process.
        cpu_processes: without CUDA, the tool runs ``num_gpus`` CPU processes (the database
            builder does, joined by gloo); otherwise more than one process needs that many GPUs.
    Raises:
        UserError: a negative count, or more GPUs than this machine has.
    """
    if num_gpus < 0:
        raise UserError(f"--num-gpus {num_gpus}: must be 0 (CPU) or a positive number of GPUs")
    available = cuda_device_count()
    if available == 0 and (num_gpus <= 1 or cpu_processes):
        if num_gpus > 1:
            _say_once(f"no CUDA GPU on this machine: --num-gpus {num_gpus} starts {num_gpus} CPU processes")
        return
    if num_gpus > available:
        raise UserError(
            f"--num-gpus {num_gpus}: this machine has {available} CUDA GPU(s)"
            + ("" if available else "; use --num-gpus 0 (or 1) to run on CPU")
        )
