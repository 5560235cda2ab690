"""Gaussian data with a halfspace oracle, where the Bayes classifier is closed form: the
pipeline's trained classifier against it, guided samples against the truncated base
(Theorem 1), the kernel Bayes reference and the diagnostics built on it, the guidance window."""

import math

import pytest
import torch
from scipy import stats
from torch import nn

from genneg.components import DataSplit, Oracle, OracleResult
from genneg.config import SynthConfig, TrainConfig
from genneg.diagnostics import (
    classifier_diagnostics,
    hold_out,
    kernel_bayes_log_prob,
    paired_difference,
)
from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.samplers import edm_heun
from genneg.engine.sampling import ModelSampler
from genneg.engine.synth import LabelledSet, draw_labelled
from genneg.engine.train import train_classifier
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.window import WindowedClassifier, windowed
from tests.gaussian import GaussianData

DATA = GaussianData(mu=0.3, s=0.7, dim=1)
ALPHA = 1 - 0.5 * math.erfc(0.3 / 0.7 / math.sqrt(2))  # P(x0 > 0) = Phi(mu / s)


class HalfLine(Oracle):
    """Valid where ``x > 0``."""

    categories = ("negative",)

    def label(self, x, cond):
        valid = x[:, 0] > 0
        return OracleResult(valid=valid, categories={"negative": ~valid})


class SmallClassifier(nn.Module):
    granularity = "sample"

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x_in, c_noise, **cond):
        return self.net(torch.cat([x_in, c_noise[:, None]], dim=1)).squeeze(-1)


def bayes(x, sigma):
    """``P(x0 > 0 | x_sigma)`` under the Gaussian base: ``x0 | x ~ N(m, v)``."""
    s2 = DATA.s**2
    m = (s2 * x[:, 0] + sigma**2 * DATA.mu) / (s2 + sigma**2)
    v = s2 * sigma**2 / (s2 + sigma**2)
    return 0.5 * torch.erfc(-m / torch.sqrt(2 * v))


def synthetic_set():
    """Algorithm 1's balanced synthetic set of the exact Gaussian base, labelled by the
    halfspace oracle."""
    torch.manual_seed(0)
    process = EDMProcess()
    sampler = ModelSampler(edm_heun, process, 32, {}, DataSplit(x=torch.zeros(1, 1)), 4000)
    synth = draw_labelled(
        sampler,
        DATA.denoiser,
        HalfLine(),
        "halfline",
        SynthConfig(n_per_class=3000, max_samples=40_000),
        keep_natural=False,
        generator=torch.Generator().manual_seed(1),
        progress=False,
    )
    return process, synth


def trained_classifier(process, synth, input="c_in", steps=2000, **options) -> TimeClassifier:
    """A :class:`SmallClassifier` trained on ``synth`` with Eq. (13) (``options``: more
    keywords of ``train_classifier``), frozen."""
    clf = TimeClassifier(SmallClassifier(), process, input)
    train_classifier(
        clf,
        synth,
        weighting="is",
        process=process,
        train=TrainConfig(steps=steps, batch_size=512, lr=3e-3, log_every=steps),
        generator=torch.Generator().manual_seed(3),
        progress=False,
        **options,
    )
    return clf.eval().requires_grad_(False)


def worst_bayes_error(process, clf) -> float:
    """The largest, over the sampler's noise levels, mean ``|C - Bayes|`` on noised base
    samples."""
    g = torch.Generator().manual_seed(4)
    x0 = DATA.sample(4000, g)
    worst = 0.0
    for sigma in process.sampling_sigmas(32)[:-1].tolist():
        xt = x0 + sigma * torch.randn(x0.shape, generator=g)
        p = torch.sigmoid(clf(xt, torch.full((len(xt),), sigma)))
        worst = max(worst, float((p - bayes(xt, torch.tensor(sigma))).abs().mean()))
    return worst


@pytest.fixture(scope="module")
def trained():
    """The pipeline on the exact base: draw and label (Algorithm 1), train with Eq. (13)."""
    process, synth = synthetic_set()
    synth, held = hold_out(synth, 0.2, torch.Generator().manual_seed(2))
    return process, synth, held, trained_classifier(process, synth)


def test_alpha_of_the_synthetic_set_is_the_base_mass_of_the_valid_set(trained):
    _, synth, _, _ = trained
    n = synth.n_positive + synth.n_negative
    assert abs(synth.alpha - ALPHA) < 3 * math.sqrt(ALPHA * (1 - ALPHA) / n) + 0.01


def test_trained_classifier_is_close_to_bayes_at_the_sampler_noise_levels(trained):
    process, _, _, clf = trained
    assert worst_bayes_error(process, clf) < 0.05


def test_guided_samples_follow_the_truncated_base(trained):
    """Theorem 1: the guided model is the base truncated to the valid set."""
    process, _, _, clf = trained
    g = torch.Generator().manual_seed(5)
    sigmas = process.sampling_sigmas(32)
    guided = edm_heun(
        GuidedDenoiser(DATA.denoiser, [clf]), process.sample_prior((3000, 1), g), sigmas
    )
    plain = edm_heun(DATA.denoiser, process.sample_prior((3000, 1), g), sigmas)
    ref = DATA.sample(20_000, g)
    ref = ref[ref[:, 0] > 0][:3000]
    assert stats.ks_2samp(guided[:, 0].numpy(), ref[:, 0].numpy()).pvalue > 0.01
    assert stats.ks_2samp(plain[:, 0].numpy(), ref[:, 0].numpy()).pvalue < 1e-6  # control
    assert float((guided[:, 0] <= 0).float().mean()) < 0.02


def test_kernel_bayes_reference_converges_to_the_closed_form():
    g = torch.Generator().manual_seed(6)
    x0 = DATA.sample(20_000, g)
    labels = x0[:, 0] > 0
    for sigma in (0.1, 0.5, 2.0, 20.0):
        q = DATA.sample(500, g)
        xt = q + sigma * torch.randn(q.shape, generator=g)
        s = torch.full((len(xt),), sigma)
        lp, ln, ess = kernel_bayes_log_prob(xt, s, x0, labels, torch.ones(len(x0)))
        assert torch.allclose(lp.exp() + ln.exp(), torch.ones(len(xt)), atol=1e-5)
        assert float((lp.exp() - bayes(xt, torch.tensor(sigma))).abs().mean()) < 0.02
        assert float(ess.min()) > 10


def test_diagnostics_of_the_trained_classifier(trained):
    process, synth, held, clf = trained
    ref = LabelledSet.cat([synth.positives, synth.negatives])
    d = classifier_diagnostics(
        clf,
        held,
        ref,
        alpha=synth.alpha,
        weighting="is",
        process=process,
        generator=torch.Generator().manual_seed(7),
    )
    b = d["bins"]
    assert sum(b["n"]) == d["n_points"] * d["draws"] == len(held) * 4
    assert all(0 <= a <= 1 for a in b["acc"])
    # the learned classifier is close to the kernel Bayes one where that is reliable
    reliable = [i for i, e in enumerate(b["ess"]) if e >= 10]
    assert len(reliable) >= 4
    for i in reliable:
        assert abs(b["bce"][i] - b["bce_bayes"][i]) < 0.03
        assert b["p_gap"][i] < 0.05
    # at the largest noise levels C ~ alpha: weighted BCE ~ the binary entropy of alpha
    h = -(synth.alpha * math.log(synth.alpha) + (1 - synth.alpha) * math.log(1 - synth.alpha))
    assert abs(b["bce"][-1] - h) < 0.02


def test_diagnostics_of_a_set_with_many_more_positives(trained):
    """``synth.keep_positive`` sets put all positives first: the diagnostics take a balanced
    subset of the held-out points and of the reference, not the first rows (positives only)."""
    from genneg.diagnostics import _balanced_rows

    process, synth, held, clf = trained
    labels = torch.tensor([True] * 900 + [False] * 50)
    rows = _balanced_rows(labels, 200)
    assert len(rows) == 200 and int((~labels[rows]).sum()) == 50  # all of the rarer label
    assert int((~labels[_balanced_rows(labels, 60)]).sum()) == 30
    pos = held.index(held.labels.nonzero().squeeze(1))
    many = LabelledSet.cat([pos, pos, pos, held.index((~held.labels).nonzero().squeeze(1))])
    ref = LabelledSet.cat([synth.positives, synth.positives, synth.negatives])
    kw = dict(alpha=synth.alpha, weighting="is", process=process)
    d = classifier_diagnostics(
        clf, many, ref, **kw, generator=torch.Generator().manual_seed(7),
        max_points=len(held), max_reference=len(synth.positives) + len(synth.negatives),
    )  # fmt: skip
    base = classifier_diagnostics(
        clf, held, LabelledSet.cat([synth.positives, synth.negatives]), **kw,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert d["n_points"] == len(held)
    assert d["acc"] == pytest.approx(base["acc"], abs=0.02)
    assert all(b is not None for b in d["bins"]["bce_bayes"])


def test_hold_out_keeps_the_balance_and_alpha(trained):
    _, synth, held, _ = trained
    assert int(held.labels.sum()) == len(held) - int(held.labels.sum())
    with pytest.raises(ValueError, match="held-out fraction"):
        hold_out(synth, 1.5, torch.Generator())
    same, none = hold_out(synth, 0.0, torch.Generator())
    assert same is synth and none is None


def test_window_zeroes_guidance_outside_and_keeps_it_inside(trained):
    process, _, _, clf = trained
    x = torch.randn(64, 1)
    full = GuidedDenoiser(DATA.denoiser, [clf])
    win = GuidedDenoiser(DATA.denoiser, windowed([clf], [0.1, 1.0]))
    for sigma, inside in ((0.05, False), (0.5, True), (5.0, False)):
        gw, gf = win.guidance(x, sigma), full.guidance(x, sigma)
        if inside:
            assert torch.allclose(gw, gf)
        else:
            assert torch.all(gw == 0) and gf.abs().max() > 0
    # per-sample noise levels straddling the window
    s = torch.tensor([0.05, 0.5]).repeat(32)
    gw, gf = win.guidance(x, s), full.guidance(x, s)
    assert torch.all(gw[::2] == 0) and torch.allclose(gw[1::2], gf[1::2])
    with pytest.raises(ValueError, match="sigma_lo < sigma_hi"):
        WindowedClassifier(clf, 1.0, 0.5)
    with pytest.raises(ValueError, match="sigma_lo, sigma_hi"):
        windowed([clf], [1.0])


def test_paired_difference():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    diff, se = paired_difference(a + torch.tensor([0.1, 0.3, 0.1, 0.3]), a)
    assert diff == pytest.approx(0.2)
    assert se == pytest.approx(float(torch.tensor([0.1, 0.3, 0.1, 0.3]).std()) / 2)


class _Affine(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, sigma, **cond):
        return self.w * x


@pytest.mark.parametrize("sigma", ["training", "elbo"])
def test_distillation_options_reach_the_teacher(sigma):
    """With either noise-level distribution (and with an EMA) the student converges to a
    teacher it can represent."""
    from genneg.engine.distill import score_matching_distill

    process = EDMProcess()
    teacher, student = _Affine(), _Affine()
    teacher.w.data.fill_(0.8)
    score_matching_distill(
        student,
        teacher,
        DataSplit(x=torch.randn(256, 1)),
        process=process,
        train=TrainConfig(steps=300, batch_size=256, lr=1e-2, log_every=300),
        generator=torch.Generator().manual_seed(0),
        progress=False,
        sigma=sigma,
        ema=0.9,
    )
    assert student.w.item() == pytest.approx(0.8, abs=0.01)


def test_distillation_rejects_bad_options():
    from genneg.engine.distill import score_matching_distill

    kw = dict(
        process=EDMProcess(),
        train=TrainConfig(steps=1),
        generator=torch.Generator(),
        progress=False,
    )
    data = DataSplit(x=torch.randn(4, 1))
    with pytest.raises(ValueError, match="'training' or 'elbo'"):
        score_matching_distill(_Affine(), _Affine(), data, sigma="uniform", **kw)
    with pytest.raises(ValueError, match="ema must be in"):
        score_matching_distill(_Affine(), _Affine(), data, ema=1.0, **kw)


def test_posterior_targets_limits_and_errors(trained):
    from genneg.classifier_targets import check_targets, posterior_targets
    from genneg.losses import label_weights

    _, synth, _, _ = trained
    data = LabelledSet.cat([synth.positives, synth.negatives])
    w = label_weights(data.labels, synth.alpha, "is", float(data.labels.float().mean()))
    x, y = data.data.x, data.labels
    # tiny noise: each point's own label
    own = posterior_targets(x, torch.full((len(x),), 1e-4), x, y, w, block=500)
    assert torch.equal(own > 0.5, y)
    # huge noise: the importance-weighted label fraction of its block (alpha on average)
    far = posterior_targets(x, torch.full((len(x),), 1e4), x, y, w, block=len(x))
    assert torch.allclose(far, torch.full((len(x),), synth.alpha), atol=1e-3)
    # in between: the kernel posterior over the block
    s = torch.full((100,), 0.3)
    ref = kernel_bayes_log_prob(x[:100] + 0.1, s, x[:100], y[:100], w[:100])[0].exp()
    got = posterior_targets(x[:100] + 0.1, s, x[:100], y[:100], w[:100], block=100)
    assert torch.allclose(got, ref, atol=1e-5)
    check_targets("posterior", data, "sample")
    with pytest.raises(ValueError, match="unknown classifier targets"):
        check_targets("soft", data, "sample")
    with pytest.raises(ValueError, match="per-sample classifier on unconditional"):
        check_targets("posterior", data, "element")


def test_posterior_targets_train_a_classifier_close_to_bayes(trained):
    """The pipeline with posterior targets: also within 0.05 of the Bayes classifier."""
    process, synth, _, _ = trained
    clf = trained_classifier(process, synth, steps=1000, targets="posterior")
    assert worst_bayes_error(process, clf) < 0.05


def test_cosine_learning_rate_schedule():
    from genneg.engine.train import learning_rate

    cfg = TrainConfig(steps=100, lr=2.0, lr_schedule="cosine")
    assert [learning_rate(cfg, s) for s in (0, 50)] == pytest.approx([2.0, 1.0])
    assert learning_rate(cfg, 99) < 0.01
    warm = TrainConfig(steps=110, lr=1.0, lr_warmup=10, lr_schedule="cosine")
    assert [learning_rate(warm, s) for s in (0, 9, 60)] == pytest.approx([0.1, 1.0, 0.5])
    assert learning_rate(TrainConfig(steps=100, lr=1.0), 50) == 1.0
    with pytest.raises(ValueError):
        TrainConfig(lr_schedule="linear")


def test_sigma_floor_evaluates_the_classifier_at_the_floor(trained):
    process, _, _, clf = trained
    x = torch.randn(64, 1)
    floored = GuidedDenoiser(DATA.denoiser, windowed([clf], [], floor=0.05))
    full = GuidedDenoiser(DATA.denoiser, [clf])
    # below the floor: C(x; 0.05), scaled by the actual sigma^2 of Eq. (9)
    g_at_floor = full.guidance(x, 0.05) * (0.01 / 0.05) ** 2
    assert torch.allclose(floored.guidance(x, 0.01), g_at_floor, rtol=1e-5, atol=1e-8)
    assert torch.allclose(floored.guidance(x, 0.5), full.guidance(x, 0.5))
    assert windowed([clf], [], 0.0) == [clf]
    with pytest.raises(ValueError, match="sigma_floor"):
        WindowedClassifier(clf, 0.0, 1.0, floor=2.0)


def test_a_run_records_classifier_diagnostics_and_the_paired_elbo(tmp_path):
    """The engine hooks: a held-out split, one ``classifier`` event and plot per iteration,
    the paired ELBO difference to the baseline and the -log(alpha) bound per stage; the
    window, floor and posterior targets run end to end; ``genneg eval`` shows the diagnostics."""
    import attrs
    from click.testing import CliRunner

    from genneg.cli import cli
    from genneg.engine.rundir import RunDir
    from genneg.engine.runner import run
    from genneg.plugins import build_registry
    from tests import toy_plugin
    from tests.toy_plugin import toy_config

    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config()
    cfg = attrs.evolve(
        cfg,
        classifier=attrs.evolve(
            cfg.classifier,
            holdout=0.2,
            targets="posterior",
            guidance_window=[0.0, 40.0],
            sigma_floor=0.01,
        ),
    )
    out = tmp_path / "r"
    rows = run(cfg, out, registry=registry, progress=False, quiet=True)
    events = RunDir(out, quiet=True).read_metrics("classifier")
    assert [e["stage"] for e in events] == ["iter1", "iter2"]
    for e in events:
        assert len(e["bins"]["acc"]) == 8 and "bce_bayes" in e and e["valid_penalty"] >= 0
        assert (out / "plots" / f"classifier_{e['stage']}.png").exists()
    assert (out / "plots" / "classifiers.png").exists()
    synth = {e["stage"]: e["alpha"] for e in RunDir(out, quiet=True).read_metrics("synth")}
    base = rows[0]
    assert "elbo_diff" not in base
    for r in rows[1:]:
        values = torch.load(out / "elbo_points" / f"{r['stage']}.pt", weights_only=True)
        ref = torch.load(out / "elbo_points" / "baseline.pt", weights_only=True)
        assert r["elbo_diff"] == pytest.approx(float((values - ref).mean()), abs=1e-9)
        assert r["elbo"] - base["elbo"] == pytest.approx(r["elbo_diff"], abs=1e-6)
    gain = -(math.log(synth["iter1"]) + math.log(synth["iter2"])) / 2  # toy data is 2-D
    assert rows[2]["elbo_ideal"] == pytest.approx(base["elbo"] + gain, abs=1e-6)
    assert "ELBO - baseline (paired)" in (out / "results.md").read_text()
    shown = CliRunner().invoke(cli, ["eval", str(out)])
    assert shown.exit_code == 0 and "held-out weighted BCE" in shown.output


def test_fit_ema_ends_with_the_average_of_the_steps():
    """``TrainConfig.ema``: the parameter ends as the exponential moving average of the values
    after each step (here plain gradient steps of a linear loss, so every value is known)."""
    from genneg.engine.train import fit

    w = torch.nn.Parameter(torch.zeros(()))
    cfg = TrainConfig(steps=5, lr=0.1, ema=0.5, log_every=5)
    fit([w], lambda step: w * 1.0, cfg, desc="t", progress=False)
    # Adam's first steps on a constant gradient move w by -lr each: -0.1, -0.2, ... -0.5
    expected = 0.0
    for k in range(1, 6):
        expected = 0.5 * expected + 0.5 * (-0.1 * k)
    assert w.item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)
