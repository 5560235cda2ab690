"""A small, shared optimisation loop (Adam, warm-up, clipping, progress, loss log)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from genneg import rng


def minibatch(split, batch_size: int, generator):
    """A random minibatch of a :class:`DataSplit`; the whole split when it is smaller
    (the paper's full-batch training on 1000 checkerboard points)."""
    n = len(split)
    if batch_size >= n:
        return split
    return split.index(rng.randint(n, (batch_size,), generator))


def fit(params, loss_fn, cfg, *, desc: str, progress: bool = True, log=None):
    """Minimise ``loss_fn(step)`` for ``cfg.steps`` Adam steps; returns ``[(step, loss)]``
    averaged over each ``cfg.log_every`` window. A non-finite loss stops training with an
    error naming the step."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    history, window = [], []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if cfg.lr_warmup:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup)
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        window.append(loss.item())
        if len(window) == cfg.log_every or step == cfg.steps - 1:
            mean = sum(window) / len(window)
            history.append((step + 1, mean))
            bar.set_postfix(loss=f"{mean:.4g}")
            if log is not None:
                log(f"{desc}: step {step + 1}/{cfg.steps} loss {mean:.5g}")
            window = []
    return history


def loss_is_sane(history) -> bool:
    return all(math.isfinite(v) for _, v in history)
