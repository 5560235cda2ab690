"""Distillation of a (stacked, guided) teacher into one student denoiser, Eq. (14)."""

from __future__ import annotations

from genneg import rng
from genneg.diffusion.loss import masked_sum, real_dims
from genneg.diffusion.shapes import broadcast
from genneg.engine.train import cond_rows, fit, minibatch, sharded_mean


def score_matching_distill(
    student, teacher, data, *, process, train, generator, progress=True, log=None
):
    """Train ``student`` in place to match ``teacher`` on noised true data (Eq. 14).

    ``|s_teacher - s_student|^2 = |D_teacher - D_student|^2 / sigma^4``; we weight the
    denoiser-space error with the process' training weight ``lambda(sigma)`` (gamma_t of
    Eq. 14, the same weighting as the baseline's loss, Eq. 5) and draw sigma from the process'
    training distribution. The teacher's output (with its classifier gradients) is computed
    without building a graph through the teacher.
    """
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(step):
        batch = minibatch(data, train.batch_size, generator)
        x0, cond = batch.x, batch.cond
        sigma = process.sample_training_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * noise

        def mean_fn(rows):  # rows: all of them in one process, this rank's share otherwise
            x, s, c = xt[rows], sigma[rows], cond_rows(cond, rows)
            target = teacher(x, s, **c).detach()
            err = broadcast(process.loss_weight(s), x) * (student(x, s, **c) - target) ** 2
            return (masked_sum(err, c) / real_dims(x0[rows], c)).mean()

        return sharded_mean(mean_fn, x0.shape[0])

    return fit(
        student.parameters(),
        loss_fn,
        train,
        desc="distill",
        progress=progress,
        log=log,
        sharded=True,
    )
