"""torch.distributed for genneg runs: process-group set-up, rank helpers and the few
collectives the engine needs.

A run started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... in the environment)
joins the process group with :func:`init_from_env`: ``gloo`` on CPU, ``nccl`` on CUDA (each
rank on the GPU ``LOCAL_RANK``). Without those variables, or with ``WORLD_SIZE=1``, nothing is
initialised and every helper here is the identity of a single process: ``rank() == 0``,
``world_size() == 1``, ``all_reduce_sum(x) == x``... so the engine runs the same code, with
the same results, in one process.
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from genneg.components import DataSplit


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that writes files, logs and shows progress bars."""
    return rank() == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment variables (``env://``
    rendezvous; multi-node runs set ``MASTER_ADDR``/``MASTER_PORT`` as usual). Returns True
    when a group of more than one process is (already) initialised."""
    if not dist.is_available() or env_world_size() <= 1:
        return False
    if dist.is_initialized():
        return is_distributed()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        init_method="env://",
        timeout=timedelta(seconds=timeout_s),
    )
    return is_distributed()


def comm_device() -> torch.device:
    """Where collective buffers live: the current GPU for nccl, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_generator(generator: torch.Generator) -> torch.Generator:
    """The generator this rank draws its share of samples with: ``generator`` itself on rank 0
    (so one process draws exactly what it always did), a generator seeded from
    ``generator.initial_seed()`` and the rank on the other ranks."""
    r = rank()
    if r == 0:
        return generator
    digest = hashlib.sha256(f"{generator.initial_seed()}/rank{r}".encode()).digest()
    seed = int.from_bytes(digest[:8], "little") & (2**63 - 1)
    return torch.Generator(device=generator.device).manual_seed(seed)


def share(n: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of rank ``r``'s contiguous share of ``n`` items (the first
    ``n % world`` ranks get one more)."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def sharded_mean(mean_fn, n: int):
    """The mean of a loss over a global batch of ``n`` rows, computed on this rank's rows only.

    ``mean_fn(rows)`` returns the mean loss over ``rows`` (a slice). Under torch.distributed
    the result is scaled by this rank's share of the rows, so that the ranks' values (and
    gradients) add up to the global mean (train with ``fit(..., sharded=True)``). In one
    process: ``mean_fn(slice(None))``."""
    if not is_distributed():
        return mean_fn(slice(None))
    start, stop = share(n)
    if stop == start:
        return mean_fn(slice(0, 1)) * 0.0  # no rows here: a zero that still has a graph
    return mean_fn(slice(start, stop)) * ((stop - start) / n)


def all_reduce_sum(values, op: str = "sum") -> list:
    """Sum (or ``max``) a list of numbers over ranks; float64 on the wire, ints stay ints."""
    values = list(values)
    if not is_distributed():
        return values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [int(x) if isinstance(v, int) else float(x) for v, x in zip(values, t.tolist())]


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` along dim 0 in rank order; ranks may hold different
    numbers of rows (including none), the trailing shapes must agree."""
    if not is_distributed():
        return t
    metas = all_gather_object((tuple(t.shape), t.dtype))
    full = [(s, d) for s, d in metas if s and s[0] > 0]
    trailing = {s[1:] for s, _ in full}
    if len(trailing) > 1:
        raise ValueError(f"cannot gather tensors with different trailing shapes: {trailing}")
    tail = next(iter(trailing)) if trailing else tuple(t.shape[1:])
    dtype = full[0][1] if full else t.dtype
    sizes = [s[0] if s else 0 for s, _ in metas]
    wire = torch.uint8 if dtype == torch.bool else dtype
    pad = torch.zeros((max(max(sizes), 1), *tail), dtype=wire, device=comm_device())
    if len(t):
        pad[: len(t)] = t.reshape(len(t), *tail).to(device=pad.device, dtype=wire)
    bufs = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(bufs, pad)
    out = torch.cat([b[:n] for b, n in zip(bufs, sizes)])
    return out.to(device=t.device, dtype=dtype)


def all_gather_split(split: DataSplit) -> DataSplit:
    """A :class:`DataSplit` of every rank's rows, in rank order."""
    if not is_distributed():
        return split
    keys = sorted({k for ks in all_gather_object(sorted(split.cond)) for k in ks})
    empty = torch.zeros(0)  # a rank without rows may not know a key's shape
    return DataSplit(
        x=all_gather_tensor(split.x),
        cond={k: all_gather_tensor(split.cond.get(k, empty)) for k in keys},
    )


def main_first(fn, *, others: bool = True):
    """Run ``fn`` on rank 0, then (if ``others``) on the other ranks; they return rank 0's
    result otherwise. An exception on rank 0 is raised there and reported on every rank, so
    no rank waits for a collective that will never come."""
    if not is_distributed():
        return fn()
    if is_main():
        try:
            out, err = fn(), None
        except Exception as exc:
            broadcast_object((None, f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object((None if others else out, err))
        return out
    out, err = broadcast_object(None)
    if err is not None:
        raise RuntimeError(f"rank 0 failed: {err}")
    return fn() if others else out


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers of rank ``src``'s ``module`` to every rank (what
    DistributedDataParallel does when it wraps a module)."""
    broadcast_tensors(list(module.parameters()) + list(module.buffers()), src)


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite each tensor in place with rank ``src``'s values."""
    if not is_distributed():
        return
    dev = comm_device()
    with torch.no_grad():
        for t in tensors:
            buf = t.detach().to(dev).clone()
            dist.broadcast(buf, src=src)
            t.copy_(buf.to(t.device))


def reduce_gradients(params, loss: torch.Tensor, *, sharded: bool) -> torch.Tensor:
    """All-reduce the gradients of ``params`` and the loss value in one flat buffer.

    ``sharded``: each rank computed its share of one global batch, scaled so that the shares
    add up to the global mean: gradients and loss are summed. Otherwise each rank computed a
    whole batch (DistributedDataParallel's convention): they are averaged. Returns the global
    loss (detached)."""
    if not is_distributed():
        return loss.detach()
    params = list(params)
    for p in params:  # a rank whose share was empty may have no gradient: it adds zeros
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    dev = comm_device()
    flat = torch.cat(
        [p.grad.detach().reshape(-1).to(dev, torch.float32) for p in params]
        + [loss.detach().reshape(1).to(dev, torch.float32)]
    )
    dist.all_reduce(flat)
    if not sharded:
        flat /= world_size()
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad).to(p.grad.device, p.grad.dtype))
        offset += n
    return flat[-1].to(loss.device)


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
