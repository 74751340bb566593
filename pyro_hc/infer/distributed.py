"""Multi-process training through ``torch.distributed``: one process per GPU, launched by ``torchrun``.

Every rank holds the whole data set on its device and the same model; the engine gives each rank
its own share of every mini-batch, averages gradients with ``DistributedDataParallel`` and, after
every epoch, copies rank 0's parameters to the others (a structural move may initialise new nodes
with random noise, which would otherwise differ between ranks). Structural heuristics all-reduce
the statistics they decide on (path masses, node weights, per-leaf squared errors) with
:func:`all_reduce_sum_`, so that, drawing from identically seeded generators, every rank makes the
same move and holds the same tree. Only rank 0 writes checkpoints.

Outside a process group every function here is a no-op, so the heuristics call them
unconditionally::

    torchrun --nproc_per_node 2 -m pyro_hc.cli fit hcrl2 --dataset mnist --out runs/ddp
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed", "world_size", "rank", "is_main_process", "all_reduce_sum_", "broadcast_module_",
    "init_from_env", "local_device",
]


def is_distributed() -> bool:
    """Whether a ``torch.distributed`` process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (and in a single-process run): the rank that writes files."""
    return rank() == 0


def all_reduce_sum_(*tensors: torch.Tensor) -> None:
    """Sum each tensor over all ranks, in place (no-op in a single process).

    The tensors are flattened into one buffer per dtype so a call costs one collective per dtype.
    """
    if not is_distributed() or not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for tensor in group:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def all_reduce_max_(tensor: torch.Tensor) -> None:
    """Element-wise maximum of ``tensor`` over all ranks, in place (no-op in a single process)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank, in place (no-op in a single process)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` under ``torchrun`` on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return torch.device("cpu")


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` describes in the environment; return whether one is running.

    Does nothing (and returns False) when ``WORLD_SIZE`` is unset or 1. The backend defaults to
    NCCL on GPUs and gloo on CPUs.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_device())
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return is_distributed()
