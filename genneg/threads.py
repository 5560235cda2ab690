"""Thread defaults: a run that does not stall beside a busy process, and ``--threads``.

Torch's intra-op parallel regions (OpenMP) end at a barrier. With OpenMP's default (active)
wait policy, a thread that reaches the barrier first spins on its core; when another process
holds the other core, the thread it has to wait for gets only part of that core, and every
region takes as long as that thread's share of the CPU lets it: measured on 2 cores, the
checkerboard demo's baseline training (3000 steps) took 34 s alone and 128 s beside one busy
process with torch's default two threads. With the passive policy a waiting thread sleeps
instead of spinning: measured beside other busy processes (2 cores, load ~9), 300 steps of
that training took 180.6 s (one run) with two threads and the default policy, a median of
4.6 s (2.4 to 9.2, four runs) with two threads and the passive one, and 10.4 s (5.3 to 13.4,
four runs) with one thread.

The policy is read once, when torch loads OpenMP, so :func:`default_wait_policy` must run
before ``import torch``: ``genneg/__init__.py`` calls it first thing. A value the user set in
``OMP_WAIT_POLICY`` is kept. :func:`configure` sets the intra-op thread count of the run
(``--threads``; default: torch's, one per core).
"""

from __future__ import annotations

import os
import sys

WAIT_POLICY = "PASSIVE"


def default_wait_policy() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, or torch (and with it OpenMP)
    is already loaded, when it would have no effect. True if it was set here."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return True


def configure(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (``None`` or 0: torch's default); returns the count.

    :raises ValueError: for a negative count.
    """
    import torch

    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
