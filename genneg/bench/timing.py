"""Wall-clock timing and peak memory of one measured block."""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from pathlib import Path

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *, repeat: int = 3, warmup: int = 1, device="cpu") -> float:
    """Best wall-clock seconds of ``repeat`` calls of ``fn()`` after ``warmup`` calls (the
    minimum is the least disturbed by other work on a shared machine)."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def timed_side_by_side(fns: dict, *, repeat: int = 3, device="cpu") -> dict:
    """Best wall-clock seconds of each of ``fns`` (name -> callable), measured in ``repeat``
    rounds that call every function once, in turn: a machine that slows down or speeds up
    during the measurement (another tenant, a frequency change) shifts every function's
    rounds alike, so the ratios between them hold where back-to-back blocks would not."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def _max_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _reset_peak_rss() -> bool:
    """Reset the process' peak RSS (Linux: ``5`` to ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hwm_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _max_rss_mib()


@contextlib.contextmanager
def peak_memory(device="cpu"):
    """Yields a dict filled on exit with ``peak_rss_mib`` (the process' peak resident set
    during the block where the OS can reset it, else since start) and, on CUDA,
    ``peak_cuda_mib``."""
    out: dict = {}
    reset = _reset_peak_rss()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        yield out
    finally:
        out["peak_rss_mib"] = round(_hwm_mib() if reset else _max_rss_mib(), 1)
        out["peak_rss_scope"] = "block" if reset else "process"
        if cuda:
            out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


def matmul_flops(device="cpu", n: int = 1024, repeat: int = 5) -> float:
    """The machine's measured float32 matmul rate (FLOP/s) at the current thread count."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, repeat=repeat, warmup=2, device=device)
    return 2.0 * n**3 / seconds
