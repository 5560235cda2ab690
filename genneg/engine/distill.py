"""Distillation of a (stacked, guided) teacher into one student denoiser, Eq. (14)."""

from __future__ import annotations

import math

import torch

from genneg import rng
from genneg.diffusion.loss import masked_sum, real_dims
from genneg.diffusion.shapes import broadcast
from genneg.engine.train import cond_rows, fit, minibatch, sharded_mean


def score_matching_distill(
    student,
    teacher,
    data,
    *,
    process,
    train,
    generator,
    progress=True,
    log=None,
    sigma: str = "training",
    ema: float = 0.0,
):
    """Train ``student`` in place to match ``teacher`` on noised true data (Eq. 14).

    ``|s_teacher - s_student|^2 = |D_teacher - D_student|^2 / sigma^4``; we weight the
    denoiser-space error with the process' training weight ``lambda(sigma)`` (gamma_t of
    Eq. 14, the same weighting as the baseline's loss, Eq. 5) and draw sigma from the process'
    training distribution. The teacher's output (with its classifier gradients) is computed
    without building a graph through the teacher.

    ``sigma="elbo"`` draws ``ln sigma`` uniformly on ``[sigma_min, sigma_max]`` and weights
    the error by ``1 / sigma^2`` instead: gamma_t of the continuous-time ELBO
    (:mod:`genneg.elbo`), so the loss is the student's ELBO-weighted distance to the teacher
    at every noise level the ELBO and the sampler visit. ``ema > 0``: the student ends with
    the exponential moving average (that decay per step) of its weights.
    """
    if sigma not in ("training", "elbo"):
        raise ValueError(f"distill sigma must be 'training' or 'elbo', got {sigma!r}")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"distill ema must be in [0, 1), got {ema}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
    params = [p for p in student.parameters() if p.requires_grad]
    average = [p.detach().clone() for p in params] if ema else None

    def update_average():
        with torch.no_grad():
            for a, p in zip(average, params, strict=True):
                a.lerp_(p, 1.0 - ema)

    def loss_fn(step):
        batch = minibatch(data, train.batch_size, generator)
        x0, cond = batch.x, batch.cond
        if average is not None and step > 0:  # the previous step's weights
            update_average()
        if sigma == "elbo":
            sig = torch.exp(lo + (hi - lo) * rng.rand(x0.shape[0], generator, x0.device))
        else:
            sig = process.sample_training_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device)
        xt = x0 + broadcast(sig, x0) * noise

        def mean_fn(rows):  # rows: all of them in one process, this rank's share otherwise
            x, s, c = xt[rows], sig[rows], cond_rows(cond, rows)
            target = teacher(x, s, **c).detach()
            weight = s**-2 if sigma == "elbo" else process.loss_weight(s)
            err = broadcast(weight, x) * (student(x, s, **c) - target) ** 2
            return (masked_sum(err, c) / real_dims(x0[rows], c)).mean()

        return sharded_mean(mean_fn, x0.shape[0])

    history = fit(
        student.parameters(),
        loss_fn,
        train,
        desc="distill",
        progress=progress,
        log=log,
        sharded=True,
    )
    if average is not None:
        update_average()
        with torch.no_grad():
            for a, p in zip(average, params, strict=True):
                p.copy_(a)
    return history
