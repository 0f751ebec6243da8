"""Running the build on several processes: detectron2's ``launch`` on GPUs, and a CPU path.

detectron2 v0.6's ``launch`` runs ``main`` in-process for world size 1 and otherwise spawns one
process per GPU with NCCL (it asserts CUDA). Without CUDA, :func:`launch_build` spawns the
processes itself with ``torch.multiprocessing`` and initialises a gloo process group, so a
multi-process build (and its test) also runs on a CPU machine. Under torchrun (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` set) each process is one rank: it joins the group
from the environment and runs ``main`` itself.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

logger = logging.getLogger(__name__)

__all__ = ["launch_build", "rank_and_world_size"]


def rank_and_world_size() -> tuple:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cpu_worker(
    local_rank: int,
    main: Callable,
    world_size: int,
    machine_rank: int,
    num_per_machine: int,
    dist_url: str,
    args: Sequence[Any],
) -> None:
    rank = machine_rank * num_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank)
    try:
        main(*args)
    finally:
        dist.destroy_process_group()


def started_by_torchrun() -> bool:
    """Whether torchrun (torch.distributed.run) started this process: it sets these variables."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def _run_torchrun_rank(main: Callable, args: Sequence[Any]) -> None:
    """This process is one rank of a torchrun job: join its group (NCCL on CUDA, else gloo)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    logger.info("torchrun rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    try:
        main(*args)
    finally:
        dist.destroy_process_group()


def launch_build(
    main: Callable,
    num_processes: int,
    *,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
) -> None:
    """Run ``main(*args)`` on ``num_processes`` processes per machine.

    ``num_processes`` 0 means one process; more than the machine's GPUs is a UserError before
    anything starts. With CUDA this is detectron2's ``launch`` (one process per GPU, NCCL). Without CUDA and
    ``num_processes > 1`` (or several machines) it spawns CPU processes joined by gloo; ``dist_url``
    "auto" picks a free local port (single machine only).
    """
    from retclip.utils.device import check_num_gpus

    check_num_gpus(num_processes, cpu_processes=True)  # before any worker starts
    num_processes = max(num_processes, 1)  # --num-gpus 0: one process (on CPU), as train_net.py
    if started_by_torchrun():
        _run_torchrun_rank(main, args)
        return
    world_size = num_processes * num_machines
    if torch.cuda.is_available() or world_size == 1:
        from detectron2.engine import launch

        launch(
            main,
            num_processes,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
        )
        return
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("dist_url='auto' is only for a single machine; pass tcp://HOST:PORT")
        from detectron2.engine.launch import _find_free_port

        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    logger.info("no CUDA: starting %d CPU processes (gloo) at %s", num_processes, dist_url)
    mp.start_processes(
        _cpu_worker,
        nprocs=num_processes,
        args=(main, world_size, machine_rank, num_processes, dist_url, tuple(args)),
        join=True,
        start_method="spawn",
    )
