"""A small, shared optimisation loop (Adam, warm-up, clipping, progress, loss log)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from genneg import distributed, rng
from genneg.diffusion.loss import masked_sum, real_dims
from genneg.diffusion.shapes import broadcast


def minibatch(split, batch_size: int, generator):
    """A random minibatch of a :class:`DataSplit`; the whole split when it is smaller
    (the paper's full-batch training on 1000 checkerboard points)."""
    n = len(split)
    if batch_size >= n:
        return split
    return split.index(rng.randint(n, (batch_size,), generator))


def shard_rows(n: int) -> tuple[slice, float] | None:
    """This rank's rows of a global batch of ``n`` and the factor that turns the mean over
    them into its share of the global mean; ``None`` in a single process (use every row)."""
    if not distributed.is_distributed():
        return None
    start, stop = distributed.share(n)
    return slice(start, stop), (stop - start) / n


def sharded_mean(mean_fn, n: int):
    """The mean of a loss over a global batch of ``n`` rows, computed on this rank's rows only.

    ``mean_fn(rows)`` returns the mean loss over ``rows`` (a slice). Under torch.distributed
    the result is scaled by this rank's share of the rows, so that the ranks' values (and
    gradients) add up to the global mean: train with ``fit(..., sharded=True)``. In one
    process: ``mean_fn(slice(None))``, today's computation."""
    part = shard_rows(n)
    if part is None:
        return mean_fn(slice(None))
    rows, weight = part
    if rows.stop == rows.start:
        return mean_fn(slice(0, 1)) * 0.0  # no rows here: a zero that still has a graph
    return mean_fn(rows) * weight


def cond_rows(cond: dict, rows) -> dict:
    """The rows ``rows`` (a slice or an index) of every tensor of ``cond``."""
    return {k: v[rows] for k, v in cond.items()}


def denoising_loss(loss, denoiser, x0, cond, generator):
    """``loss(denoiser, x0, cond, generator)`` (a :class:`DenoisingLoss`), with the network
    evaluated on this rank's rows only under torch.distributed. Every rank draws the whole
    batch's noise levels and noise from the shared generator, in the same order as
    ``DenoisingLoss.per_sample``, so the ranks' shares add up to the one-process loss."""
    if not distributed.is_distributed():
        return loss(denoiser, x0, cond, generator)
    process = loss.process
    sigma = process.sample_training_sigma(x0.shape[0], generator, x0.device)
    noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)

    def mean_fn(rows):
        x, s, c = x0[rows], sigma[rows], cond_rows(cond, rows)
        denoised = denoiser(x + broadcast(s, x) * noise[rows], s, **c)
        err = broadcast(process.loss_weight(s), x) * (denoised - x) ** 2
        return (masked_sum(err, c) / real_dims(x, c)).mean()

    return sharded_mean(mean_fn, x0.shape[0])


def fit(
    params,
    loss_fn,
    cfg,
    *,
    desc: str,
    progress: bool = True,
    log=None,
    sharded: bool = False,
):
    """Minimise ``loss_fn(step)`` for ``cfg.steps`` Adam steps; returns ``[(step, loss)]``
    averaged over each ``cfg.log_every`` window. A non-finite loss stops training with an
    error naming the step.

    Under torch.distributed the parameters start from rank 0's and the gradients are
    all-reduced after each backward pass, so every rank takes the same step (as
    DistributedDataParallel does): summed when ``sharded`` (each rank's loss is its share of
    one global batch, see :func:`sharded_mean`), else averaged. Only rank 0 logs and shows
    a progress bar. In one process this is plain Adam."""
    params = [p for p in params if p.requires_grad]
    multi = distributed.is_distributed()
    if multi:
        distributed.broadcast_tensors(params)
        progress = progress and distributed.is_main()
        log = log if distributed.is_main() else None
    opt = torch.optim.Adam(params, lr=cfg.lr)
    history, window = [], []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if cfg.lr_warmup or cfg.lr_schedule != "constant":
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
        loss = loss_fn(step)
        if multi:  # every rank sees the global loss, so all stop together on a bad one
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss = distributed.reduce_gradients(params, loss, sharded=sharded)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
        if not multi:
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


def learning_rate(cfg, step: int) -> float:
    """The learning rate of step ``step``: linear warm-up over ``cfg.lr_warmup`` steps, then
    constant or (``cfg.lr_schedule == "cosine"``) a cosine decay to 0 at ``cfg.steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup) if cfg.lr_warmup else cfg.lr
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.lr_warmup, 1)
        done = min(max(step - cfg.lr_warmup, 0), span)
        lr *= 0.5 * (1.0 + math.cos(math.pi * done / span))
    return lr


def loss_is_sane(history) -> bool:
    return all(math.isfinite(v) for _, v in history)
