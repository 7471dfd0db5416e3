"""The process group kiln runs on: torch.distributed, started by torchrun.

`init()` joins the group that `torchrun --nproc-per-node N` describes in the environment
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): gloo for the CPU, NCCL for device="cuda".
Graphs then carry collectives with `world=N` (kiln.ir.ops.collective), data-parallel training
averages gradients with them (kiln.train.data_parallel) and tensor-parallel models split their
layers across the ranks (kiln.models.tensor_parallel).
"""

from __future__ import annotations

import os

from kiln.errors import DistributedError


def init(device: str = "cpu") -> tuple[int, int]:
    """Join (or reuse) the default process group; returns (rank, world size)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise DistributedError("no process group: RANK / WORLD_SIZE are not set; launch with "
                                   "`torchrun --nproc-per-node N script.py`")
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def rank() -> int:
    """This process's rank (0 without a group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The group's size (1 without a group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def require_world(world: int, what: str) -> int:
    """This process's rank, checked to be in a group of `world` ranks."""
    if world == 1:
        return 0
    got = world_size()
    if got != world:
        raise DistributedError(f"{what} runs on {world} ranks, but this process is in a group of {got}; "
                               f"launch with `torchrun --nproc-per-node {world}` and call kiln.distributed.init()")
    return rank()
