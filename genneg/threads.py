"""Thread defaults: a run that uses the cores it has and does not stall beside a busy process.

Torch's intra-op parallel regions (OpenMP) end at a barrier: a region takes as long as its
slowest thread. When another process holds one of the cores, the torch thread that shares it
gets only part of it, and every region waits for that thread: measured on 2 cores, the
checkerboard demo's baseline training (3000 steps) took 34 s alone and 128 s beside one busy
process with torch's default two threads, and 46.7 s alone and 44.6 s beside it with one.
OpenMP's passive wait policy (genneg's earlier default) removes the spinning but not the waiting,
and costs speed alone (1.9x on the bench's threading case).

So genneg picks the thread count from the cores the machine has free (:class:`ThreadGovernor`):
about once a second, from the loops that do the work (training steps, sampler steps, ELBO
levels: :func:`tick`), it reads how much CPU time other processes took since the last look
(Linux ``/proc/stat`` minus this process' own time) and uses as many threads as there are
cores left, at least one, at most torch's default. Alone it runs with every core, as torch
does; beside a busy process it drops to the free cores within a second and comes back when
they are free again. ``--threads N`` fixes the count (no governor). Where ``/proc/stat`` cannot
be read (not Linux) torch's default stays. OpenMP's wait policy is left to OpenMP (a value in
``OMP_WAIT_POLICY`` is the user's).
"""

from __future__ import annotations

import math
import os
import time

#: seconds between two looks at the machine's load (the first look comes sooner, FIRST_LOOK)
INTERVAL = 1.0
FIRST_LOOK = 0.25
#: a core counts as free when at most this fraction of it is used by other processes
FREE_MARGIN = 0.25


def cpu_seconds() -> tuple[float, float] | None:
    """``(busy, own)``: CPU seconds all processes spent on all cores since boot (``/proc/stat``:
    user, nice, system, irq, softirq and steal, the last being time the hypervisor gave to
    others), and this process' own (all its threads); ``None`` where ``/proc/stat`` cannot be
    read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    own = os.times()
    return (user + nice + system + irq + softirq + steal) / hz, own.user + own.system


def free_threads(others: float, cores: int, max_threads: int) -> int:
    """Threads to use when other processes keep ``others`` cores busy: the free cores (a core
    at most :data:`FREE_MARGIN` used by others counts as free), between 1 and ``max_threads``."""
    free = math.floor(cores - max(others, 0.0) + FREE_MARGIN)
    return max(1, min(max_threads, free))


class ThreadGovernor:
    """Sets torch's intra-op thread count to the cores other processes leave free, looking at
    most every ``interval`` seconds (:meth:`tick`).

    :param max_threads: the most threads to use (torch's default: one per core).
    :param cores: the machine's cores (``os.cpu_count()``).
    :param read: ``() -> (busy, own)`` CPU seconds (:func:`cpu_seconds`); a test passes its own.
    :param clock: wall-clock seconds (``time.monotonic``).
    :param apply: sets the thread count (``torch.set_num_threads``).
    """

    def __init__(
        self,
        max_threads: int,
        *,
        cores: int | None = None,
        interval: float = INTERVAL,
        read=cpu_seconds,
        clock=time.monotonic,
        apply=None,
    ):
        if apply is None:
            import torch

            apply = torch.set_num_threads
        self.max_threads = max(1, int(max_threads))
        self.cores = cores or os.cpu_count() or 1
        self.interval = interval
        self.read, self.clock, self.apply = read, clock, apply
        self.threads = self.max_threads
        self.others = 0.0  # cores other processes used over the last interval
        self.changes = 0
        self._last = (self.clock(), self.read())
        self._wait = min(FIRST_LOOK, interval)  # a run started beside a busy process adapts soon

    def tick(self) -> int:
        """Look at the machine if ``interval`` has passed and set the thread count; returns it."""
        now = self.clock()
        t0, sample0 = self._last
        if now - t0 < self._wait:
            return self.threads
        sample = self.read()
        self._last = (now, sample)
        self._wait = self.interval
        if sample is None or sample0 is None:
            return self.threads
        busy = sample[0] - sample0[0]
        own = sample[1] - sample0[1]
        self.others = max(busy - own, 0.0) / (now - t0)
        want = free_threads(self.others, self.cores, self.max_threads)
        if want != self.threads:
            self.apply(want)
            self.threads = want
            self.changes += 1
        return self.threads


_governor: ThreadGovernor | None = None


def configure(threads: int | None) -> int:
    """Use ``threads`` intra-op threads, fixed; ``None`` or 0: as many as the cores other
    processes leave free, up to torch's default (a :class:`ThreadGovernor` that :func:`tick`
    drives; torch's default where the load cannot be read, or on one core). Returns the
    count now.

    :raises ValueError: for a negative count.
    """
    import torch

    global _governor
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be >= 0 (0: the free cores), got {threads}")
    if threads:
        _governor = None
        torch.set_num_threads(threads)
    elif _governor is None and (os.cpu_count() or 1) > 1 and cpu_seconds() is not None:
        _governor = ThreadGovernor(torch.get_num_threads())
    return torch.get_num_threads()


def governor() -> ThreadGovernor | None:
    """The governor :func:`configure` started, if any."""
    return _governor


def tick() -> None:
    """Let the governor (if :func:`configure` started one) adjust the thread count: called
    once per step by the loops that do a run's work; costs a clock read between looks."""
    if _governor is not None:
        _governor.tick()
