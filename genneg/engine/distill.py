"""The built-in distiller (registered as ``score-matching``): a student denoiser trained to
match a (stacked, guided) teacher with Eq. (14)."""

from __future__ import annotations

import attrs
import torch

from genneg.components import DataSplit
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

    params = [p for p in student.parameters() if p.requires_grad]  # a residual's correction
    return fit(params, loss_fn, train, desc="distill", progress=progress, log=log, sharded=True)


def distillation_points(exp, classifiers, generator, log=None) -> DataSplit:
    """The clean points Eq. (14) noises for the student of ``exp`` (a
    :class:`genneg.Experiment`) and its stack ``classifiers``: the training split, plus
    ``distill.samples`` samples of ``distill.samples_from`` (the baseline, or the guided
    teacher), drawn by the synthetic sets' sampler under the training conditions.

    Why (the paper distils on true data only): the student must match the teacher where its
    own trajectories go, and it starts as the baseline, whose trajectories that end in an
    infraction pass through noisy points that noised valid data rarely visits. There the
    teacher's guidance term is large, and that term is what the student has to learn; the
    model's samples (infracting ones included) put those points into the regression. The
    optimum of Eq. (14) is the teacher wherever the points have support, so adding points
    changes only where the student's capacity is spent. Non-finite samples are dropped.
    Under torch.distributed every rank draws the same samples (one generator)."""
    train, n = exp.splits.train, exp.cfg.distill.samples
    if n <= 0:
        return train
    source = exp.cfg.distill.samples_from
    model = exp.base if source == "baseline" else exp.guided(classifiers)  # as synth sets
    drawn = exp.synth_sampler.sample(model, n, generator)
    finite = torch.isfinite(drawn.x.flatten(1)).all(dim=1)
    drawn = drawn.index(finite.nonzero().squeeze(1))
    if log is not None:
        share = len(drawn) / (len(drawn) + len(train))
        log(
            f"distill: regressing on {len(train)} training rows and {len(drawn)} samples of "
            f"the {source} ({share:.1%} of the points; {n - len(drawn)} non-finite dropped)"
        )
    return DataSplit.cat([train, drawn])
