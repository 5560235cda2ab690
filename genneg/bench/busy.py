"""The threading benchmark (issue 13): a training loop in a fresh process with torch's default
thread count, under genneg's default OpenMP wait policy (passive) and under OpenMP's own
(active), each alone and beside one busy process (``python -c 'while True: pass'``).

The worker imports genneg before torch, as ``genneg run`` does, so the passive case is exactly
what a user gets without setting anything; the active case sets ``OMP_WAIT_POLICY=ACTIVE``,
which genneg keeps (:mod:`genneg.threads`). The workload is the checkerboard demo's baseline
step in shape (a 2 -> 128 -> 128 -> 128 -> 2 SiLU MLP, Adam, batch 1000), built from torch alone
so that the case needs no plugin. On one core there is nothing to measure and the case is
skipped."""

from __future__ import annotations

import os
import subprocess
import sys

WORKER = r"""
import sys, time
import genneg  # noqa: F401  (sets the wait policy before torch starts its threads)
import torch

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
    loss = ((net(x) - x) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
print(time.perf_counter() - t0, torch.get_num_threads())
"""

POLICIES = {"passive (genneg's default)": None, "active (OpenMP's default)": "ACTIVE"}


def _worker_env(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    return env


def run_worker(policy: str | None, steps: int, busy: bool, timeout: float = 600) -> dict:
    """Seconds for ``steps`` training steps in a fresh process (and its thread count)."""
    neighbour = None
    if busy:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(steps)],
            env=_worker_env(policy),
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


def bench_threads(report, *, steps: int = 300, log=print) -> None:
    """Add a ``threads`` row per wait policy: seconds alone, beside one busy process, and
    their ratio (the stall a busy neighbour causes)."""
    cores = os.cpu_count() or 1
    if cores < 2:
        log("threads: one core, nothing to measure")
        return
    for name, policy in POLICIES.items():
        alone = run_worker(policy, steps, busy=False)
        beside = run_worker(policy, steps, busy=True)
        report.add(
            "threads",
            policy=name,
            steps=steps,
            threads=alone["threads"],
            seconds_alone=alone["seconds"],
            seconds_beside_busy=beside["seconds"],
            slowdown=beside["seconds"] / alone["seconds"],
        )
        log(
            f"threads, {name}: {alone['seconds']:.2f} s alone, "
            f"{beside['seconds']:.2f} s beside a busy process"
        )
