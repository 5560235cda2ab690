"""Teacher targets regressed at more than once (``distill.target_reuse``, ours).

Each step of Eq. (14) evaluates the teacher, the baseline plus a forward and backward pass
through every stacked classifier, on a fresh minibatch; on SUMO traffic (two classifiers, a
residual student) that is more than half of a step's time, and the student is still
under-fitting when its steps run out (docs/traffic.md, session 19: 6000 -> 12000 steps took
the stack's student from 1.68 x to 1.94 x fewer infracting scenes). :class:`TargetPool`
spends the teacher's evaluations over several steps: it draws ``reuse`` fresh minibatches of
rows (:meth:`genneg.losses.DistillationLoss.draw`), evaluates the teacher on them once, and
then regresses the student at every row ``reuse`` times, in ``reuse`` shuffled passes of
``reuse`` minibatches each, before drawing again. The teacher costs ``1 / reuse`` of what it
did per step.

Why it keeps Eq. (14): every row is a draw of the loss' distribution (noise levels, noise,
data rows, sampler states) and its target is the teacher's value there, so each step's loss is
still an unbiased estimate of Eq. (14) and its optimum is unchanged; rows are only less
independent across neighbouring steps (``reuse ** 2`` steps share ``reuse`` minibatches' rows).

For a :class:`genneg.student.ResidualStudent` the pool also keeps the frozen baseline's
``D(x_t)`` of each row (float32), so a step evaluates only the correction network.

Under torch.distributed every rank draws the same rows (one generator, as the loss does),
keeps its own contiguous share of each minibatch (:func:`genneg.distributed.share`) and
evaluates the teacher there only; a step's minibatch is each rank's shuffled share, scaled as
:func:`genneg.distributed.sharded_mean` scales, so the ranks' losses add up to the global mean.
"""

from __future__ import annotations

import torch

from genneg import distributed, rng
from genneg.components import DataSplit
from genneg.losses import NoisyRows, weighted_error
from genneg.student import ResidualStudent


class TargetPool:
    """The student's loss at rows whose teacher targets are each used ``reuse`` times.

    ``draw_batch()`` returns one minibatch ``(x0, cond, states)`` of the distiller's points
    (as the distiller draws them without a pool); ``loss`` is the
    :class:`~genneg.losses.DistillationLoss` whose rows and weight are used. Call
    :meth:`loss` once per step."""

    def __init__(self, loss, student, teacher, draw_batch, reuse: int, generator):
        if int(reuse) != reuse or reuse < 1:
            raise ValueError(f"distill target_reuse must be a positive integer, got {reuse!r}")
        self.distill_loss, self.student, self.teacher = loss, student, teacher
        self.draw_batch, self.reuse, self.generator = draw_batch, int(reuse), generator
        self.residual = isinstance(student, ResidualStudent)
        self.queue: list[torch.Tensor] = []  # the pool's rows of each coming step
        self.rows: NoisyRows | None = None
        self.target = self.denoised = None
        self.scale = 1.0  # this rank's share of a global minibatch
        self.teacher_rows = 0  # rows the teacher was evaluated at (all fills)

    def _fill(self) -> None:
        """Draw ``reuse`` minibatches, keep this rank's share of each, evaluate the teacher
        (and a residual student's baseline) there, and queue ``reuse`` shuffled passes."""
        parts, targets, denoised, shares, total = [], [], [], [], 0
        for _ in range(self.reuse):
            x0, cond, states = self.draw_batch()
            rows = self.distill_loss.draw(x0, cond, self.generator, states)
            n = rows.xt.shape[0]
            start, stop = distributed.share(n)  # (0, n) in one process
            mine = rows.index(slice(start, stop))
            with torch.no_grad():
                targets.append(self.teacher(mine.xt, mine.sigma, **mine.cond).detach().float())
                if self.residual:
                    denoised.append(self.student.base(mine.xt, mine.sigma, **mine.cond).float())
            parts.append(mine)
            shares.append(stop - start)
            total += n
        self.rows = _cat_rows(parts)
        self.target = torch.cat(targets)
        self.denoised = torch.cat(denoised) if self.residual else None
        self.teacher_rows += len(self.target)
        self.scale = sum(shares) / total  # each step: one minibatch's share of its rows
        size = len(self.target)
        self.queue = []
        for _ in range(self.reuse):  # one pass: every row of the pool once
            perm = rng.randperm(size, self.generator, self.target.device)
            self.queue.extend(perm.tensor_split(self.reuse))
        self.queue.reverse()  # popped from the end, in the order drawn

    def loss(self) -> torch.Tensor:
        """The next step's loss (a fresh fill every ``reuse ** 2`` steps)."""
        if not self.queue:
            self._fill()
        idx = self.queue.pop()
        if len(idx) == 0:  # this rank owns no rows: a zero that still has a graph
            idx = torch.zeros(1, dtype=torch.long, device=self.target.device)
            factor = 0.0
        else:
            factor = self.scale
        rows = self.rows.index(idx)
        if self.residual:
            out = self.student.corrected(self.denoised[idx], rows.sigma, **rows.cond)
        else:
            out = self.student(rows.xt, rows.sigma, **rows.cond)
        err = weighted_error(
            self.distill_loss.weight, out, self.target[idx].to(out.dtype), rows.x0, rows.cond,
            rows.sigma,
        )  # fmt: skip
        return err * factor


def _cat_rows(parts: list[NoisyRows]) -> NoisyRows:
    split = DataSplit.cat([DataSplit(x=p.xt, cond=p.cond) for p in parts])
    return NoisyRows(
        xt=split.x, x0=torch.cat([p.x0 for p in parts]), cond=split.cond,
        sigma=torch.cat([p.sigma for p in parts]),
    )  # fmt: skip
