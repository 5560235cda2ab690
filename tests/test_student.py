"""The distillation students (genneg.student): the residual student starts as the baseline,
keeps it frozen, learns a closed-form guidance term with Eq. (14), and round-trips through a
run's checkpoint."""

import attrs
import pytest
import torch
from torch import nn

from genneg.config import DistillConfig
from genneg.diffusion.edm import EDMDenoiser, EDMProcess
from genneg.diffusion.shapes import broadcast
from genneg.engine.distill import score_matching_distill
from genneg.engine.runner import run
from genneg.experiment import Experiment
from genneg.guidance import GuidedDenoiser, TimeClassifier, data_scale
from genneg.plugins import build_registry
from genneg.student import ResidualStudent, init_student, make_student
from tests import toy_plugin
from tests.gaussian import GaussianData
from tests.toy_plugin import MLP, toy_config


class ExactGaussianDenoiser(nn.Module):
    """The exact posterior mean of 2-D ``N(0, 0.5^2)`` data (no weights)."""

    def __init__(self):
        super().__init__()
        self.data = GaussianData(mu=0.0, s=0.5, dim=2)

    def forward(self, x, sigma, **cond):
        return self.data.denoiser(x, sigma)


class HalfLineLogit(nn.Module):
    """``logit C(u) = 6 (u_0 + 0.3)``: a soft oracle ``x_0 > -0.3`` on the network input."""

    granularity = "sample"

    def forward(self, x_in, c_noise, **cond):
        return 6.0 * (x_in[:, 0] + 0.3)


def weighted_energy(a, sigma, process):
    return (process.loss_weight(sigma) * a.pow(2).sum(1)).mean()


def test_untrained_residual_student_is_the_baseline_and_trains_only_its_correction():
    process = EDMProcess()
    new = lambda: EDMDenoiser(MLP(), process)  # noqa: E731
    base = new()
    student = init_student(make_student("residual", new, process), base)
    assert isinstance(student, ResidualStudent)
    x, sigma = torch.randn(16, 2), torch.rand(16) * 3 + 0.01
    torch.testing.assert_close(student(x, sigma), base(x, sigma), rtol=0, atol=0)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("network.") for n in trainable)
    assert set(student.state_dict()) >= {f"base.{k}" for k in base.state_dict()}
    fine = init_student(make_student("fine-tune", new, process), base)
    torch.testing.assert_close(fine(x, sigma), base(x, sigma), rtol=0, atol=0)
    assert all(p.requires_grad for p in fine.parameters())


def distil_closed_form(reuse: int = 1):
    """The residual student of the closed-form teacher (the exact Gaussian denoiser guided by
    the soft half-line classifier, ``denoised-st`` input), distilled with Eq. (14), each
    target regressed at ``reuse`` times; returns ``(student, the term's weighted energy, the
    teacher-student residual's)`` on fresh noised data."""
    torch.manual_seed(0)
    process = EDMProcess()
    base = ExactGaussianDenoiser()
    clf = TimeClassifier(HalfLineLogit(), process, input="denoised-st", denoiser=base)
    teacher = GuidedDenoiser(base, [clf.requires_grad_(False)])
    student = init_student(ResidualStudent(base, MLP(hidden=64), process), base)
    gen = torch.Generator().manual_seed(1)
    data = toy_plugin.ToyData(n=4000).load(None, gen).train
    train = attrs.evolve(toy_config().distill.train, steps=1500, batch_size=256, lr=3e-3)
    score_matching_distill(student, teacher, data, process=process, train=train,
                           generator=gen, progress=False, reuse=reuse)  # fmt: skip
    x0 = 0.5 * torch.randn(4000, 2, generator=gen)
    sigma = process.sample_training_sigma(len(x0), gen, x0.device)
    xt = x0 + broadcast(sigma, x0) * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        d, dt, ds = base(xt, sigma), teacher(xt, sigma), student(xt, sigma)
    return (
        student,
        weighted_energy(dt - d, sigma, process),
        weighted_energy(dt - ds, sigma, process),
    )


def test_residual_student_learns_a_closed_form_guidance_term():
    """Teacher: the exact Gaussian denoiser guided by a soft half-line classifier with the
    ``denoised-st`` input (Eq. 9); its term is ``sigma^2 sigma_d c_in^2 grad_u log C(u)`` at
    ``u = D(x) / sigma_d``, which the residual student's correction can represent exactly.
    After Eq. (14) the student must carry at least 99 % of the term's weighted energy (the
    baseline's part is frozen: the first test)."""
    student, term, residual = distil_closed_form()
    assert term > 1e-3  # the teacher does guide
    assert residual < 0.01 * term
    process = student.process
    # the factor is the posterior-mean input's: sigma_d c_in^2 sigma^2 (EDM: sigma_d = 0.5)
    s = torch.tensor([[0.7]])
    expected = 0.49 * 0.5 / (0.49 + 0.25)
    assert student.term_factor(s).item() == pytest.approx(expected) and data_scale(process) == 0.5


def test_residual_student_runs_and_reloads(tmp_path):
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config(iterations=1)
    cfg = attrs.evolve(cfg, distill=attrs.evolve(cfg.distill, student="residual"))
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert rows[-1]["stage"] == "distill"
    exp = Experiment.from_run_dir(tmp_path / "r", registry=registry)
    student = exp.load_stage("distill")
    base = exp.load_stage("baseline")
    assert isinstance(student, ResidualStudent)
    torch.testing.assert_close(student.base.state_dict(), base.state_dict())
    x, sigma = torch.randn(8, 2), torch.full((8,), 0.5)
    assert not torch.allclose(student(x, sigma), base(x, sigma))  # the correction trained


def test_student_kind_and_network_are_checked():
    with pytest.raises(ValueError, match="student"):
        DistillConfig(student="copy")
    with pytest.raises(ValueError, match="unknown distill.student 'copy'"):
        make_student("copy", MLP, EDMProcess())

    class NoLinear(nn.Module):
        def forward(self, x_in, c_noise, **cond):
            return x_in

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.network = NoLinear()

    with pytest.raises(ValueError, match="NoLinear has no nn.Linear"):
        make_student("residual", Wrapped, EDMProcess())
    with pytest.raises(ValueError, match="raw .network"):
        make_student("residual", MLP, EDMProcess())


# --- a student confined to the guidance window (distill.in_window) ---


def test_windowed_residual_student_is_the_baseline_outside_its_window():
    process = EDMProcess()
    new = lambda: EDMDenoiser(MLP(), process)  # noqa: E731
    base = new()
    student = init_student(make_student("residual", new, process, (0.2, 1.0)), base)
    with torch.no_grad():  # a correction that is not zero anywhere
        for p in student.network.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 2)
    sigma = torch.tensor([0.05, 0.1999, 0.2, 0.6, 1.0, 2.0])
    out, ref = student(x, sigma), base(x, sigma)
    same = (out == ref).all(dim=1)
    assert same.tolist() == [True, True, False, False, False, True]
    torch.testing.assert_close(student(x[:2], sigma[:2]), ref[:2], rtol=0, atol=0)
    # the window is part of the checkpoint; one written before the option means every level
    state = student.state_dict()
    assert state["window"].tolist() == pytest.approx([0.2, 1.0])
    other = make_student("residual", new, process)
    other.load_state_dict(state)
    assert other.window.tolist() == pytest.approx([0.2, 1.0])
    del state["window"]
    other.load_state_dict(state)
    assert other.window[0] == 0 and torch.isinf(other.window[1])
    assert not (other(x, sigma) == ref).all(dim=1)[0]


def test_windowed_distillation_learns_the_windowed_teacher():
    """The teacher guides only for sigma in [0.2, 1] (genneg.window); the windowed student,
    regressed only there, must carry 99 % of the term's weighted energy inside the window and
    be the teacher exactly outside it."""
    from genneg.window import windowed

    torch.manual_seed(0)
    process, window = EDMProcess(), (0.2, 1.0)
    base = ExactGaussianDenoiser()
    clf = TimeClassifier(HalfLineLogit(), process, input="denoised-st", denoiser=base)
    teacher = GuidedDenoiser(base, windowed([clf.requires_grad_(False)], window))
    student = init_student(ResidualStudent(base, MLP(hidden=64), process, window), base)
    gen = torch.Generator().manual_seed(1)
    data = toy_plugin.ToyData(n=4000).load(None, gen).train
    train = attrs.evolve(toy_config().distill.train, steps=800, batch_size=256, lr=3e-3)
    score_matching_distill(student, teacher, data, process=process, train=train,
                           generator=gen, progress=False, window=window)  # fmt: skip
    x0 = 0.5 * torch.randn(4000, 2, generator=gen)
    sigma = process.sample_training_sigma(len(x0), gen, x0.device)
    xt = x0 + broadcast(sigma, x0) * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        d, dt, ds = base(xt, sigma), teacher(xt, sigma), student(xt, sigma)
    inside = (sigma >= 0.2) & (sigma <= 1.0)
    assert 0.2 < inside.float().mean() < 0.8
    term = weighted_energy((dt - d)[inside], sigma[inside], process)
    assert term > 1e-3
    assert weighted_energy((dt - ds)[inside], sigma[inside], process) < 0.01 * term
    torch.testing.assert_close(ds[~inside], dt[~inside], rtol=0, atol=0)


def test_distillation_loss_draws_its_levels_inside_the_window():
    """On DDPM-100 (sigmas 0.032, 0.063, ...) the window [0.05, 0.2] holds levels 2-6: the
    loss draws them uniformly, as the training distribution conditioned on the window; a
    window without a training level is an error naming the option."""
    from genneg.diffusion.vp import VPConfig, VPProcess
    from genneg.losses import DistillationLoss

    process = VPProcess(VPConfig(timesteps=100))
    loss = DistillationLoss(process, window=(0.05, 0.2))
    gen = torch.Generator().manual_seed(0)
    sigma = loss._training_sigma(5000, gen, None)
    levels = torch.from_numpy(process.sigmas64).float()
    inside = levels[(levels >= 0.05) & (levels <= 0.2)]
    assert len(sigma) == 5000 and len(inside) == 5
    counts = torch.stack([(sigma == s).sum() for s in inside])
    assert counts.sum() == 5000
    torch.testing.assert_close(counts / 5000.0, torch.full((5,), 0.2), atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="holds .*none of the process' training noise levels"):
        DistillationLoss(process, window=(0.0, 0.01))._training_sigma(10, gen, None)
    with pytest.raises(ValueError, match="sigma_lo, sigma_hi"):
        DistillationLoss(process, window=(0.3, 0.1))


def test_in_window_needs_a_residual_student_and_a_guidance_window(tmp_path):
    from genneg.config import ConfigError, from_dict, to_dict

    data = to_dict(toy_config())
    data["distill"]["in_window"] = True
    with pytest.raises(ConfigError, match="distill.in_window .* needs both"):
        from_dict(data)
    data["distill"]["student"] = "residual"
    with pytest.raises(ConfigError, match="guidance_window = \\[\\]"):
        from_dict(data)
    data["classifier"]["guidance_window"] = [0.0, 0.5]
    cfg = from_dict(data)
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    rows = run(attrs.evolve(cfg, iterations=1), tmp_path / "r", registry=registry,
               progress=False, quiet=True)  # fmt: skip
    assert rows[-1]["stage"] == "distill"
    student = Experiment.from_run_dir(tmp_path / "r", registry=registry).load_stage("distill")
    assert student.window.tolist() == [0.0, 0.5]
    x = torch.randn(8, 2)
    base = student.base
    torch.testing.assert_close(student(x, torch.full((8,), 0.8)), base(x, torch.full((8,), 0.8)))
    assert not torch.allclose(student(x, torch.full((8,), 0.3)), base(x, torch.full((8,), 0.3)))


def test_correction_options_shape_the_residual_students_correction_network(tmp_path):
    """``distill.correction`` replaces the denoiser's options for the correction network
    only: the frozen baseline keeps its own; the run's checkpoint reloads into that
    architecture; a fine-tuned student or an option the denoiser lacks is a clear error."""
    from genneg.config import ConfigError, from_dict, to_dict
    from genneg.errors import BuildError

    data = to_dict(toy_config(iterations=1))
    data["distill"]["correction"] = {"hidden": 8}
    with pytest.raises(ConfigError, match="distill.correction .* distill.student is 'fine-tune'"):
        from_dict(data)
    data["distill"]["student"] = "residual"
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    run(from_dict(data), tmp_path / "r", registry=registry, progress=False, quiet=True)
    exp = Experiment.from_run_dir(tmp_path / "r", registry=registry)
    student = exp.load_stage("distill")
    assert student.network.net[0].out_features == 8  # the correction's own width
    assert student.base.network.net[0].out_features == 32  # the baseline's, unchanged
    torch.testing.assert_close(student.base.state_dict(), exp.load_stage("baseline").state_dict())
    data["distill"]["correction"] = {"depth": 3}
    exp = Experiment.from_config(from_dict(data), registry=registry)
    with pytest.raises(BuildError, match="distill.correction: .*'mlp' does not accept"):
        exp.new_student()
