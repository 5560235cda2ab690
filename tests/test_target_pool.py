"""Teacher targets regressed at more than once (distill.target_reuse, genneg.engine.target_pool):
the teacher is evaluated on ``1 / reuse`` of the rows, every row is regressed at exactly
``reuse`` times, each step's loss is Eq. (14)'s at its rows, ranks' shares add up to the one
process' loss, and a residual student still learns the closed-form guidance term."""

import attrs
import pytest
import torch
from torch import nn

from genneg import distributed
from genneg.config import DistillConfig
from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.shapes import broadcast
from genneg.engine.runner import run
from genneg.engine.target_pool import TargetPool
from genneg.losses import DistillationLoss
from genneg.plugins import build_registry
from genneg.student import ResidualStudent, init_student
from tests import toy_plugin
from tests.test_student import ExactGaussianDenoiser, distil_closed_form
from tests.toy_plugin import MLP, toy_config

B = 8


class CountingTeacher(nn.Module):
    """A fixed nonlinear map of ``x`` that counts the rows it was evaluated at."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def forward(self, x, sigma, **cond):
        self.rows += len(x)
        return torch.tanh(x) + 0.1 * broadcast(sigma, x)


def _setup(reuse, seed=0):
    torch.manual_seed(seed)
    process = EDMProcess()
    base = ExactGaussianDenoiser()
    student = init_student(ResidualStudent(base, MLP(hidden=16), process), base)
    with torch.no_grad():  # a correction that is not zero, so the errors are not trivial
        for p in student.network.parameters():
            p.normal_(0.0, 0.3)
    teacher = CountingTeacher()
    data = torch.randn(200, 2)
    gen = torch.Generator().manual_seed(seed + 1)
    draw = lambda: (data[torch.randint(200, (B,), generator=gen)], {}, None)  # noqa: E731
    pool = TargetPool(DistillationLoss(process), student, teacher, draw, reuse, gen)
    return pool, student, teacher


@pytest.mark.parametrize("reuse", [1, 3, 4])
def test_teacher_is_evaluated_once_per_reuse_minibatches_and_rows_used_reuse_times(reuse):
    pool, _, teacher = _setup(reuse)
    for _ in range(2 * reuse * reuse):  # two fills
        pool.loss()
    assert teacher.rows == 2 * reuse * B  # one evaluation per row, reuse minibatches per fill
    assert pool.teacher_rows == teacher.rows
    assert not pool.queue  # the second fill was used up, no third drawn
    # each pool row is queued exactly reuse times, over reuse * reuse steps
    pool2, _, _ = _setup(reuse)
    pool2._fill()
    counts = torch.bincount(torch.cat(pool2.queue), minlength=reuse * B)
    assert counts.tolist() == [reuse] * (reuse * B)
    assert len(pool2.queue) == reuse * reuse


def test_a_pooled_step_is_eq14_at_its_rows():
    """The residual shortcut (the stored baseline value) gives the student's own output, and
    the step's loss is the weighted squared error to the teacher at the step's rows."""
    pool, student, teacher = _setup(reuse=4)
    pool._fill()
    idx = pool.queue[-1]
    loss = pool.loss()
    rows = pool.rows.index(idx)
    with torch.no_grad():
        out = student(rows.xt, rows.sigma)
        target = torch.tanh(rows.xt) + 0.1 * broadcast(rows.sigma, rows.xt)
    weight = broadcast(pool.distill_loss.weight(rows.sigma), out)
    expected = (weight * (out - target) ** 2).mean(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0


def test_ranks_shares_add_up_to_the_one_process_loss(monkeypatch):
    """Over one fill (reuse^2 steps) the sum of the ranks' losses is the one process' sum:
    every rank keeps its contiguous share of each minibatch and scales as sharded_mean does."""
    reuse, world = 4, 2

    def total():
        pool, _, teacher = _setup(reuse)
        s = sum(pool.loss().item() for _ in range(reuse * reuse))
        return s, teacher.rows

    one, rows_one = total()
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    parts, rows = [], 0
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        s, n = total()
        parts.append(s)
        rows += n
    assert rows == rows_one  # the teacher saw each row once, on one rank
    assert sum(parts) == pytest.approx(one, rel=1e-5)


def test_residual_student_learns_the_closed_form_term_with_reused_targets():
    """The closed-form teacher of test_student (exact Gaussian denoiser, soft half-line
    classifier): with each target regressed at 4 times the student still carries at least
    99 % of the term's weighted energy, at a quarter of the teacher's evaluations."""
    _, term, residual = distil_closed_form(reuse=4)
    assert term > 1e-3
    assert residual < 0.01 * term


def test_target_reuse_is_checked_and_a_run_with_it_finishes(tmp_path):
    with pytest.raises(ValueError, match="target_reuse must be > 0"):
        DistillConfig(target_reuse=0)
    pool_args = (DistillationLoss(EDMProcess()), None, None, None)
    with pytest.raises(ValueError, match="target_reuse must be a positive integer"):
        TargetPool(*pool_args, 1.5, None)
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config(iterations=1)
    cfg = attrs.evolve(cfg, distill=attrs.evolve(cfg.distill, student="residual", target_reuse=3))
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert rows[-1]["stage"] == "distill"
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "each teacher target regressed at 3 times" in log
