"""Distillation at the sampler's own states (``distill.trajectories``,
genneg.engine.distill.trajectory_states): the states are the denoiser calls of the baseline's
trajectories, in ``x = x0 + sigma n`` units (closed form: Gaussian data's marginals), Eq. (14)
regresses at them as they are, and a run with them finishes and reloads."""

import attrs
import pytest
import torch

from genneg.components import DataSplit
from genneg.config import DistillConfig
from genneg.diffusion.shapes import broadcast
from genneg.engine.distill import NoisyStates, _Recorder, trajectory_states
from genneg.engine.runner import run
from genneg.experiment import Experiment
from genneg.losses import DistillationLoss
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.test_student import ExactGaussianDenoiser
from tests.toy_plugin import MLP, toy_config


@pytest.fixture
def registry():
    return build_registry({"toy": toy_plugin}, autoload=False)


def experiment(registry, **distill):
    cfg = toy_config()
    cfg = attrs.evolve(cfg, distill=attrs.evolve(cfg.distill, **distill))
    return Experiment(cfg, registry=registry)


def recorded_calls(exp, model, n, seed):
    """The ``(x, sigma)`` inputs of every denoiser call of ``n`` trajectories of ``model``
    under the synthetic sets' sampler: ``[calls, n, ...]`` and ``[calls, n]``."""
    recorder = _Recorder(model)
    exp.synth_sampler.sample(recorder, n, torch.Generator().manual_seed(seed))
    return (
        torch.stack([x for x, _ in recorder.calls]),
        torch.stack([s for _, s in recorder.calls]),
    )


def found_among_calls(states, xs, sigmas):
    """For each state, whether it is one of the calls of its own trajectory (states are
    ``[k, trajectory]`` flattened, so state ``j`` belongs to trajectory ``j % n``)."""
    n = xs.shape[1]
    return [
        bool(
            (
                (xs[:, j % n] == states.points.x[j]).all(dim=1)
                & (sigmas[:, j % n] == states.sigma[j])
            ).any()
        )
        for j in range(len(states))
    ]


def test_states_are_calls_of_the_baselines_trajectories(registry):
    """Each state is the input ``(x, sigma)`` of one of the sampler's calls on its own
    trajectory (row), ``trajectory_states`` per trajectory; 0 trajectories: none (the
    paper's)."""
    assert trajectory_states(experiment(registry), torch.Generator()) is None
    exp = experiment(registry, trajectories=300, trajectory_states=3)
    logs = []
    states = trajectory_states(exp, torch.Generator().manual_seed(1), logs.append)
    assert len(states) == 900 and states.sigma.shape == (900,)
    assert "900 states of 300 baseline trajectories (3 each" in logs[-1]
    found = found_among_calls(states, *recorded_calls(exp, exp.base, 300, seed=1))
    missing = [j for j, hit in enumerate(found) if not hit]
    assert not missing, f"states {missing[:5]} are not calls of their trajectories"
    assert len(set(states.sigma.tolist())) > 5  # calls at many levels


def test_states_have_the_gaussian_marginals():
    """With the exact denoiser of ``N(0, 0.5^2)`` data, the sampler's state at level sigma is
    (up to the sampler's discretisation) ``N(0, 0.5^2 + sigma^2)``: the states are in the
    units Eq. (14)'s noised points are in."""
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    exp = experiment(registry, trajectories=4000, trajectory_states=4)
    exp.__dict__["base"] = ExactGaussianDenoiser()
    exp.__dict__["synth_sampler"] = exp._sampler(32, exp.splits.train)
    states = trajectory_states(exp, torch.Generator().manual_seed(2))
    low = states.sigma < 20  # the prior's own level carries no sampler error
    ratio = states.points.x[low].pow(2).mean(1) / (0.25 + states.sigma[low] ** 2)
    assert low.sum() > 10_000
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.04)


def test_the_loss_regresses_at_the_states_as_they_are():
    """Eq. (14) on noised points plus states: the weighted mean over all rows, each state at
    its own ``x`` and ``sigma`` (no noise added)."""
    from genneg.diffusion.edm import EDMDenoiser, EDMProcess

    torch.manual_seed(0)
    process = EDMProcess()
    student, teacher = EDMDenoiser(MLP(), process), EDMDenoiser(MLP(), process)
    x0 = torch.randn(6, 2)
    states = NoisyStates(DataSplit(x=torch.randn(4, 2) * 3), torch.tensor([0.1, 0.5, 2.0, 7.0]))
    loss = DistillationLoss(process)
    got = loss(student, teacher, x0, {}, torch.Generator().manual_seed(3), states=states)
    gen = torch.Generator().manual_seed(3)
    sigma = process.sample_training_sigma(6, gen, x0.device)
    xt = torch.cat(
        [x0 + broadcast(sigma, x0) * torch.randn(x0.shape, generator=gen), states.points.x]
    )
    sigma = torch.cat([sigma, states.sigma])
    with torch.no_grad():
        err = (student(xt, sigma) - teacher(xt, sigma)).pow(2).mean(1)
    want = (process.loss_weight(sigma) * err).mean()
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
    alone = loss(student, teacher, x0, {}, torch.Generator().manual_seed(3))
    assert not torch.isclose(alone, got)


@pytest.mark.parametrize("source", ["baseline", "teacher"])
def test_a_run_with_trajectory_states_finishes(tmp_path, registry, source):
    cfg = toy_config(iterations=1)
    distill = attrs.evolve(
        cfg.distill, student="residual", trajectories=200, trajectories_from=source
    )
    rows = run(
        attrs.evolve(cfg, distill=distill),
        tmp_path / "r",
        registry=registry,
        progress=False,
        quiet=True,
    )
    assert rows[-1]["stage"] == "distill" and 0 <= rows[-1]["infraction"] <= 100
    log = (tmp_path / "r" / "log.txt").read_text()
    assert f"distill: 800 states of 200 {source} trajectories" in log
    student = Experiment.from_run_dir(tmp_path / "r", registry=registry).load_stage("distill")
    base = Experiment.from_run_dir(tmp_path / "r", registry=registry).load_stage("baseline")
    x, sigma = torch.randn(8, 2), torch.full((8,), 0.5)
    assert not torch.allclose(student(x, sigma), base(x, sigma))


def test_trajectory_settings_are_checked():
    with pytest.raises(ValueError, match="trajectories"):
        DistillConfig(trajectories=-1)
    with pytest.raises(ValueError, match="trajectory_states"):
        DistillConfig(trajectory_states=0)


def test_non_finite_trajectories_are_dropped_and_counted(registry):
    """A trajectory that turns non-finite at any call is left out whole, and the log says
    how many were."""

    class NanRowZero(torch.nn.Module):
        def forward(self, x, sigma, **cond):
            out = torch.zeros_like(x)
            out[0] = float("nan")
            return out

    exp = experiment(registry, trajectories=20, trajectory_states=2)
    exp.__dict__["base"] = NanRowZero()
    logs = []
    states = trajectory_states(exp, torch.Generator().manual_seed(0), logs.append)
    assert len(states) == 2 * 19 and torch.isfinite(states.points.x).all()
    assert "1 non-finite trajectories dropped" in logs[-1]


def test_teacher_states_are_calls_of_the_guided_trajectories(registry):
    """``trajectories_from = "teacher"``: the states are calls of the stack-guided model's
    trajectories (the same sampler and generator), which a non-zero guidance term moves off
    the baseline's; without a stack the setting is refused by name."""
    exp = experiment(registry, trajectories=100, trajectory_states=2, trajectories_from="teacher")
    torch.manual_seed(0)
    stack = [exp.new_classifier()]
    with torch.no_grad():  # a steep classifier, so the guidance term is not negligible
        for p in stack[0].parameters():
            p.mul_(4.0)
    logs = []
    states = trajectory_states(exp, torch.Generator().manual_seed(5), logs.append, stack)
    assert len(states) == 200 and "200 states of 100 teacher trajectories" in logs[-1]
    assert all(found_among_calls(states, *recorded_calls(exp, exp.guided(stack), 100, seed=5)))
    # the baseline shares only the first call (the prior's draw; 1 in 15 calls): 11 of 200
    assert sum(found_among_calls(states, *recorded_calls(exp, exp.base, 100, seed=5))) < 40
    with pytest.raises(ValueError, match="trajectories_from = 'teacher' needs"):
        trajectory_states(exp, torch.Generator())
    with pytest.raises(ValueError, match="trajectories_from"):
        DistillConfig(trajectories_from="student")


def test_states_of_infracting_trajectories_are_repeated(registry):
    """``distill.infracting_repeats = 3``: the states of each trajectory whose final sample
    the oracle flags are kept three times, in place; the other trajectories' once; the same
    trajectories are drawn either way."""

    def states_of(repeats, logs=None):
        torch.manual_seed(0)  # the same untrained baseline in both experiments
        exp = experiment(
            registry, trajectories=300, trajectory_states=3, infracting_repeats=repeats
        )
        exp.base  # noqa: B018 (built now, under the seed)
        return exp, trajectory_states(exp, torch.Generator().manual_seed(1), logs)

    _, once = states_of(1)
    logs = []
    exp, states = states_of(3, logs.append)
    final = exp.synth_sampler.sample(exp.base, 300, torch.Generator().manual_seed(1))
    bad = ~exp.label(final).valid
    assert 0 < int(bad.sum()) < 300
    times = torch.where(bad[torch.arange(len(once)) % 300], 3, 1)  # state j: trajectory j % 300
    assert len(states) == int(times.sum()) > len(once)
    torch.testing.assert_close(states.points.x, once.points.x.repeat_interleave(times, dim=0))
    torch.testing.assert_close(states.sigma, once.sigma.repeat_interleave(times))
    assert f"the {int(bad.sum())} trajectories whose sample the oracle flags kept 3" in logs[-1]
    with pytest.raises(ValueError, match="infracting_repeats"):
        DistillConfig(infracting_repeats=0)
