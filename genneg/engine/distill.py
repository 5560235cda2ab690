"""The built-in distiller (registered as ``score-matching``): a student denoiser trained to
match a (stacked, guided) teacher with Eq. (14)."""

from __future__ import annotations

from genneg.engine.train import fit, minibatch
from genneg.losses import DistillationLoss


def score_matching_distill(
    student, teacher, data, *, process, train, generator, progress=True, log=None
):
    """Train ``student`` in place to match ``teacher`` on noised true data ``data`` (a
    :class:`genneg.DataSplit`) with :class:`genneg.losses.DistillationLoss` (Eq. 14); returns
    the loss history ``[(step, loss)]``."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = DistillationLoss(process)

    def loss_fn(step):
        batch = minibatch(data, train.batch_size, generator)
        return loss(student, teacher, batch.x, batch.cond, generator)

    params = student.parameters()
    return fit(params, loss_fn, train, desc="distill", progress=progress, log=log, sharded=True)
