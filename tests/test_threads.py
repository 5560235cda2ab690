"""Thread defaults (genneg/threads.py): the governor uses the cores other processes leave
free, --threads fixes the count, and genneg leaves OpenMP's wait policy alone."""

import os
import subprocess
import sys

import pytest
import torch

from genneg import threads
from genneg.threads import ThreadGovernor, configure, cpu_seconds, free_threads


class FakeMachine:
    """A clock and ``(busy, own)`` CPU seconds that a test advances: ``run(seconds, own,
    others)`` spends ``own`` cores of this process and ``others`` cores of other processes."""

    def __init__(self):
        self.now, self.busy, self.own = 100.0, 5000.0, 10.0
        self.applied = []

    def clock(self):
        return self.now

    def read(self):
        return self.busy, self.own

    def run(self, seconds, own, others):
        self.now += seconds
        self.own += own * seconds
        self.busy += (own + others) * seconds

    def governor(self, max_threads=2, cores=2):
        return ThreadGovernor(
            max_threads,
            cores=cores,
            interval=1.0,
            read=self.read,
            clock=self.clock,
            apply=self.applied.append,
        )


def test_free_threads_counts_the_cores_others_leave():
    assert free_threads(0.0, 2, 2) == 2
    assert free_threads(0.2, 2, 2) == 2  # a core a fifth used by others still counts as free
    assert free_threads(0.5, 2, 2) == 1
    assert free_threads(1.0, 2, 2) == 1
    assert free_threads(3.0, 2, 2) == 1  # never below one
    assert free_threads(0.0, 8, 4) == 4  # never above the maximum
    assert free_threads(2.9, 8, 8) == 5
    assert free_threads(-0.1, 2, 2) == 2


def test_governor_drops_to_the_free_cores_beside_a_busy_process_and_comes_back():
    m = FakeMachine()
    gov = m.governor()
    m.run(0.1, own=2.0, others=0.0)
    assert gov.tick() == 2 and gov._last[0] == 100.0  # too soon: no look
    m.run(0.2, own=2.0, others=0.0)
    assert gov.tick() == 2 and m.applied == []  # the first look comes soon; alone: every core
    assert gov._last[0] == pytest.approx(100.3)
    m.run(0.5, own=2.0, others=0.0)
    gov.tick()
    assert gov._last[0] == pytest.approx(100.3)  # then once per interval
    m.run(0.5, own=2.0, others=0.0)
    assert gov.tick() == 2 and m.applied == []
    # a busy neighbour: three threads share two cores, this process gets 4/3 of them
    m.run(1.0, own=4 / 3, others=2 / 3)
    assert gov.tick() == 1 and m.applied == [1]
    assert gov.others == pytest.approx(2 / 3)
    m.run(1.0, own=1.0, others=1.0)
    assert gov.tick() == 1 and m.applied == [1]  # still busy: stays
    m.run(1.0, own=1.0, others=0.0)  # the neighbour ended
    assert gov.tick() == 2 and m.applied == [1, 2]
    assert gov.changes == 2


def test_governor_without_a_reading_keeps_the_count():
    m = FakeMachine()
    gov = ThreadGovernor(2, cores=2, read=lambda: None, clock=m.clock, apply=m.applied.append)
    m.run(5.0, own=1.0, others=1.0)
    assert gov.tick() == 2 and m.applied == []


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc/stat")
def test_cpu_seconds_reads_this_machine():
    busy0, own0 = cpu_seconds()
    x = 0
    for i in range(2_000_000):  # about 0.1 s of CPU
        x += i
    busy1, own1 = cpu_seconds()
    assert own1 > own0 and busy1 >= busy0
    assert busy0 >= own0  # the machine's busy time includes this process'


def test_configure_fixes_the_count_or_starts_the_governor():
    before = torch.get_num_threads()
    try:
        assert configure(1) == 1 and torch.get_num_threads() == 1
        assert threads.governor() is None  # a fixed count: no governor
        with pytest.raises(ValueError, match="threads must be >= 0"):
            configure(-2)
        torch.set_num_threads(2)
        configure(0)
        if (os.cpu_count() or 1) > 1 and cpu_seconds() is not None:
            gov = threads.governor()
            assert gov is not None and gov.max_threads == 2
            threads.tick()  # drives it; within an interval nothing changes
            assert torch.get_num_threads() == gov.threads
    finally:
        threads._governor = None
        torch.set_num_threads(before)


def test_importing_genneg_leaves_the_wait_policy_to_openmp():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, genneg, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"
