"""The collectives of kiln.ir.ops.collective on torch.distributed's default process group.

Both backends call these: the NumPy backend with host arrays (gloo), the Triton backend with
CUDA tensors (NCCL, inside the captured CUDA graph). world == 1 needs no group. gloo has no
reduce_scatter, so there it is an all_reduce that keeps this rank's shard.
"""

from __future__ import annotations

import numpy as np

from kiln.errors import DistributedError


def process_group(op: str, world: int):
    """torch.distributed, checked to run a group of `world` ranks."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(f"{op} over {world} ranks, but no process group is initialized; launch with "
                               f"`torchrun --nproc-per-node {world}` and call kiln.distributed.init()")
    if dist.get_world_size() != world:
        raise DistributedError(f"{op} was built for {world} ranks, but the process group has "
                               f"{dist.get_world_size()}")
    return dist


def all_reduce(t, world: int, reduce: str = "sum"):
    """A new tensor: the sum (mean) of torch tensor t over the group."""
    out = t.clone()
    if world > 1:
        process_group("all_reduce", world).all_reduce(out)
    return out / world if reduce == "mean" else out


def all_gather(t, world: int, axis: int = 0):
    import torch

    if world == 1:
        return t.clone()
    dist = process_group("all_gather", world)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=axis)


def reduce_scatter(t, world: int, axis: int = 0, reduce: str = "sum"):
    import torch

    if world == 1:
        return all_reduce(t, 1, reduce)
    dist = process_group("reduce_scatter", world)
    rank, n = dist.get_rank(), t.shape[axis] // world
    if t.is_cuda:
        chunks = list(t.movedim(axis, 0).contiguous().chunk(world))
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks)
        out = out.movedim(0, axis)
    else:   # gloo: reduce everything, keep this rank's shard
        out = all_reduce(t, world).narrow(axis, rank * n, n)
    out = out.contiguous()
    return out / world if reduce == "mean" else out


def numpy_collective(fn, x: np.ndarray, **attrs) -> np.ndarray:
    """Run collective `fn` on a host array through torch (bfloat16 by its bits), back as NumPy."""
    import torch

    a = np.ascontiguousarray(x)
    half = a.dtype.name == "bfloat16"
    t = torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16) if half else torch.from_numpy(a.copy())
    y = fn(t, **attrs)
    return y.view(torch.uint16).numpy().view(a.dtype) if half else y.numpy().astype(a.dtype, copy=False)
