"""The built-in distiller (registered as ``score-matching``): a student denoiser trained to
match a (stacked, guided) teacher with Eq. (14)."""

from __future__ import annotations

import attrs
import torch

from genneg import rng
from genneg.components import DataSplit, index_cond
from genneg.engine.target_pool import TargetPool
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
    states: NoisyStates | None = None,
    window=(),
    reuse: int = 1,
):
    """Train ``student`` in place to match ``teacher`` on noised true data ``data`` (a
    :class:`genneg.DataSplit`) with :class:`genneg.losses.DistillationLoss` (Eq. 14); returns
    the loss history ``[(step, loss)]``.

    Options (``distill.options``): ``sigma`` (``"training"``: the process' training noise
    levels and weight; ``"elbo"``: the ELBO's, see the loss) and ``ema`` (``> 0``: the student
    ends with the exponential moving average, that decay per step, of its weights).
    ``states`` (:func:`trajectory_states`): noisy states a sampler visited, regressed at as
    they are; each minibatch takes its share of rows from them in proportion to their count
    among all points (``len(states) / (len(states) + len(data))``). ``window``
    (``(sigma_lo, sigma_hi)``, ``distill.in_window``): regress only at noise levels inside
    it, for a student confined to it (:mod:`genneg.student`); states outside it are dropped
    before the shares are taken. ``reuse`` (``distill.target_reuse``): each teacher target is
    regressed at that many times (:class:`genneg.engine.target_pool.TargetPool`); 1: a fresh
    minibatch and teacher evaluation every step."""
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"distill ema must be in [0, 1), got {ema}")
    for p in teacher.parameters():
        p.requires_grad_(False)
    loss = DistillationLoss(process, sigma=sigma, window=window)
    if states is not None and window:
        states = loss.states_in_window(states)  # once, before the shares are taken
        if log is not None:
            log(f"distill: {len(states)} of the states lie in the window {list(window)}")
    if ema:  # the option predates TrainConfig.ema; both mean the same average
        train = attrs.evolve(train, ema=ema)

    n_states = 0
    if states is not None and len(states):
        n_states = round(train.batch_size * len(states) / (len(states) + len(data)))

    def draw_batch():
        batch = minibatch(data, train.batch_size - n_states, generator)
        visited = None
        if n_states:
            visited = states.index(rng.randint(len(states), (n_states,), generator))
        return batch.x, batch.cond, visited

    def fresh_loss(step):
        x0, cond, visited = draw_batch()
        return loss(student, teacher, x0, cond, generator, states=visited)

    loss_fn = fresh_loss
    if reuse != 1:  # the pool checks the value
        pool = TargetPool(loss, student, teacher, draw_batch, reuse, generator)
        loss_fn = lambda step: pool.loss()  # noqa: E731
        if log is not None:
            log(f"distill: each teacher target regressed at {reuse} times (distill.target_reuse)")

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
    drawn = exp.synth_sampler.sample(sampled_model(exp, source, classifiers), n, generator)
    finite = torch.isfinite(drawn.x.flatten(1)).all(dim=1)
    drawn = drawn.index(finite.nonzero().squeeze(1))
    if log is not None:
        share = len(drawn) / (len(drawn) + len(train))
        log(
            f"distill: regressing on {len(train)} training rows and {len(drawn)} samples of "
            f"the {source} ({share:.1%} of the points; {n - len(drawn)} non-finite dropped)"
        )
    return DataSplit.cat([train, drawn])


def sampled_model(exp, source: str, classifiers):
    """The model whose samples or trajectories the distiller adds to its points: ``source``
    ``"baseline"`` (the unguided model) or ``"teacher"`` (the baseline guided by the stack
    ``classifiers``, as the synthetic sets are drawn)."""
    return exp.base if source == "baseline" else exp.guided(classifiers)


@attrs.frozen
class NoisyStates:
    """Noisy points (``points.x``, in ``x = x0 + sigma n`` units, with their conditioning
    tensors) at noise levels ``sigma`` ``[B]``: where a sampler's trajectories went."""

    points: DataSplit
    sigma: torch.Tensor

    def __len__(self) -> int:
        return len(self.points)

    def index(self, idx: torch.Tensor) -> NoisyStates:
        return NoisyStates(self.points.index(idx), self.sigma[idx])

    @classmethod
    def cat(cls, parts: list[NoisyStates]) -> NoisyStates:
        return cls(DataSplit.cat([p.points for p in parts]), torch.cat([p.sigma for p in parts]))


class _Recorder(torch.nn.Module):
    """A denoiser that keeps the inputs ``(x, sigma)`` of every call (one sampling batch)."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser, self.calls, self.cond = denoiser, [], None

    def forward(self, x, sigma, **cond):
        self.calls.append((x.detach().clone(), torch.as_tensor(sigma).reshape(-1).expand(len(x))))
        self.cond = cond
        return self.denoiser(x, sigma, **cond)


def trajectory_states(exp, generator, log=None, classifiers=()) -> NoisyStates | None:
    """``distill.trajectory_states`` states from each of ``distill.trajectories`` sampler
    trajectories of ``distill.trajectories_from`` (the baseline, or the teacher: the baseline
    guided by the stack ``classifiers``; the synthetic sets' sampler, training conditions): at
    each trajectory's randomly chosen calls of the denoiser, the ``(x_t, sigma)`` it was called
    at. ``None`` when ``distill.trajectories`` is 0 (the paper: noised true data only).

    Why: Eq. (14) noises clean scenes, so its points at a level ``sigma`` are a clean scene
    plus isotropic noise; a sampler's own states carry the errors of the steps before them.
    The student starts as the baseline, so these are the states its sampling visits before
    it learns anything, including those of trajectories that end in an infraction, where the
    teacher's guidance term is what the student must learn. The teacher's states are where
    a student that has learnt samples (the fixed point of regressing at the student's own
    states, as imitation learning does). The optimum of Eq. (14) is the teacher wherever the
    points have support, so the states change where the student's capacity goes, not what it
    converges to. Non-finite trajectories are dropped."""
    cfg = exp.cfg.distill
    if cfg.trajectories <= 0:
        return None
    source = cfg.trajectories_from
    if source == "teacher" and not classifiers:
        raise ValueError("distill.trajectories_from = 'teacher' needs the stack's classifiers")
    model = sampled_model(exp, source, classifiers)
    sampler, parts, dropped, flagged = exp.synth_sampler, [], 0, 0
    for start in range(0, cfg.trajectories, sampler.batch_size):
        recorder = _Recorder(model)
        final = sampler.sample(
            recorder, min(sampler.batch_size, cfg.trajectories - start), generator
        )
        xs = torch.stack([x for x, _ in recorder.calls])  # [calls, b, ...]
        sigmas = torch.stack([s for _, s in recorder.calls])  # [calls, b]
        calls, b = sigmas.shape
        finite = torch.isfinite(xs.flatten(2)).all(dim=2).all(dim=0)
        dropped += int((~finite).sum())
        pick = torch.stack(
            [rng.randint(calls, (b,), generator) for _ in range(cfg.trajectory_states)]
        )  # [k, b]: the calls kept of each trajectory
        keep = finite.expand_as(pick).reshape(-1)
        call = pick.reshape(-1)[keep]
        row = torch.arange(b).expand_as(pick).reshape(-1)[keep]
        if cfg.infracting_repeats > 1:
            bad = ~exp.label(final).valid  # [b]: flagged or non-finite
            flagged += int((bad & finite).sum())
            times = torch.where(bad[row], cfg.infracting_repeats, 1)
            call, row = call.repeat_interleave(times), row.repeat_interleave(times)
        points = DataSplit(x=xs[call, row], cond=index_cond(recorder.cond, row))
        parts.append(NoisyStates(points, sigmas[call, row]))
    states = NoisyStates.cat(parts)
    if log is not None:
        log(
            f"distill: {len(states)} states of {cfg.trajectories} {source} trajectories "
            f"({cfg.trajectory_states} each; {dropped} non-finite trajectories dropped)"
        )
        if cfg.infracting_repeats > 1:
            log(
                f"distill: the states of the {flagged} trajectories whose sample the oracle "
                f"flags kept {cfg.infracting_repeats} times (distill.infracting_repeats)"
            )
    return states


def distillation_inputs(exp, classifiers, generator, log=None) -> dict:
    """The distiller's points: ``data`` (:func:`distillation_points`) and, when
    ``distill.trajectories > 0``, ``states`` (:func:`trajectory_states`), with
    ``distill.in_window`` the ``window`` to regress in, and with ``distill.target_reuse > 1``
    the ``reuse`` of each teacher target (a distiller that takes no ``states``, ``window`` or
    ``reuse`` keeps working while the options are off)."""
    inputs = {"data": distillation_points(exp, classifiers, generator, log)}
    states = trajectory_states(exp, generator, log, classifiers)
    if states is not None:
        inputs["states"] = states
    if exp.cfg.distill.in_window:
        inputs["window"] = tuple(exp.cfg.classifier.guidance_window)
    if exp.cfg.distill.target_reuse > 1:
        inputs["reuse"] = exp.cfg.distill.target_reuse
    return inputs
