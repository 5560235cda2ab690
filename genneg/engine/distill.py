"""The built-in distiller (registered as ``score-matching``): a student denoiser trained to
match a (stacked, guided) teacher with Eq. (14)."""

from __future__ import annotations

import attrs

from genneg.engine.train import fit, minibatch
from genneg.losses import DistillationLoss


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
    """Train ``student`` in place to match ``teacher`` on noised true data ``data`` (a
    :class:`genneg.DataSplit`) with :class:`genneg.losses.DistillationLoss` (Eq. 14); returns
    the loss history ``[(step, loss)]``.

    Options (``distill.options``): ``sigma`` (``"training"``: the process' training noise
    levels and weight; ``"elbo"``: the ELBO's, see the loss) and ``ema`` (``> 0``: the student
    ends with the exponential moving average, that decay per step, of its weights)."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"distill ema must be in [0, 1), got {ema}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = DistillationLoss(process, sigma=sigma)
    if ema:  # the option predates TrainConfig.ema; both mean the same average
        train = attrs.evolve(train, ema=ema)

    def loss_fn(step):
        batch = minibatch(data, train.batch_size, generator)
        return loss(student, teacher, batch.x, batch.cond, generator)

    params = student.parameters()
    return fit(params, loss_fn, train, desc="distill", progress=progress, log=log, sharded=True)
