"""The threading benchmark (issue 13): a training loop in a fresh process, alone and beside
one busy process (``python -c 'while True: pass'``), under each thread setting of
:data:`SETTINGS`: genneg's default (the :class:`genneg.threads.ThreadGovernor`, which uses the
cores other processes leave free), torch's default count fixed (one thread per core, what
torch does without genneg) and one thread.

The worker configures threads as ``genneg run`` does (:func:`genneg.threads.configure`, then
:func:`genneg.threads.tick` once per step, as genneg's loops do). The workload is the
checkerboard demo's baseline step in shape (a 2 -> 128 -> 128 -> 128 -> 2 SiLU MLP, Adam,
batch 1000), built from torch alone so that the case needs no plugin. On one core there is
nothing to measure and the case is skipped."""

from __future__ import annotations

import os
import subprocess
import sys

WORKER = r"""
import sys, time
import torch
from genneg import threads

threads.configure(int(sys.argv[2]))
torch.manual_seed(0)
layers = [torch.nn.Linear(2, 128), torch.nn.SiLU()]
for _ in range(2):
    layers += [torch.nn.Linear(128, 128), torch.nn.SiLU()]
net = torch.nn.Sequential(*layers, torch.nn.Linear(128, 2))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
x = torch.randn(1000, 2)
steps, warmup = int(sys.argv[1]), 20
for i in range(warmup + steps):
    if i == warmup:
        t0 = time.perf_counter()
    threads.tick()
    loss = ((net(x) - x) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
print(time.perf_counter() - t0, torch.get_num_threads())
"""

#: name -> ``--threads`` of the worker (0: genneg's governor; -1: torch's default, fixed)
SETTINGS = {
    "free cores (genneg's default)": 0,
    "one per core, fixed (torch's default)": -1,
    "one": 1,
}


def _worker_env() -> dict:
    """The environment of a worker: the caller's, without thread-count or wait-policy
    overrides, so each setting is what a user gets from genneg and torch alone."""
    drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    return {k: v for k, v in os.environ.items() if k not in drop}


def run_worker(threads: int, steps: int, busy: bool, timeout: float = 600) -> dict:
    """Seconds for ``steps`` training steps in a fresh process with the thread setting
    ``threads`` (:data:`SETTINGS`), and the thread count at the end."""
    neighbour = None
    if busy:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    fixed = (os.cpu_count() or 1) if threads < 0 else threads
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(steps), str(fixed)],
            env=_worker_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout.split()
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return {"seconds": float(out[0]), "threads": int(out[1])}


def bench_threads(report, *, steps: int = 3000, log=print) -> None:
    """Add a ``threads`` row per thread setting: seconds alone, beside one busy process, and
    their ratio (the stall a busy neighbour causes)."""
    cores = os.cpu_count() or 1
    if cores < 2:
        log("threads: one core, nothing to measure")
        return
    for name, threads in SETTINGS.items():
        alone = run_worker(threads, steps, busy=False)
        beside = run_worker(threads, steps, busy=True)
        report.add(
            "threads",
            setting=name,
            steps=steps,
            threads_alone=alone["threads"],
            threads_beside_busy=beside["threads"],
            seconds_alone=alone["seconds"],
            seconds_beside_busy=beside["seconds"],
            slowdown=beside["seconds"] / alone["seconds"],
        )
        log(
            f"threads, {name}: {alone['seconds']:.2f} s alone ({alone['threads']} threads), "
            f"{beside['seconds']:.2f} s beside a busy process ({beside['threads']} threads)"
        )
