"""The classifier's view of ``x_t`` (``classifier.input``): the closed-form scalings, their
decay at high noise (the Bayes classifier's, by Tweedie's formula), the stacked path, errors,
and a trained posterior-mean classifier against the closed-form Bayes classifier."""

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from genneg.diffusion.edm import EDMConfig, EDMProcess
from genneg.diffusion.samplers import edm_heun
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.guidance import GuidedDenoiser, TimeClassifier, classifier_input, data_scale
from genneg.stacking import StackedClassifiers, stackable
from tests.test_classifier_quality import DATA, bayes, synthetic_set, trained_classifier


class Linear(nn.Module):
    """``f(u) = a . u``: its input gradient is ``a`` whatever the input."""

    granularity = "sample"

    def __init__(self, dim=3, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64))

    def forward(self, x_in, c_noise, **cond):
        return x_in @ self.a

    def stacked_forward(self, params, buffers, x_in, c_noise, cache, **cond):
        return torch.einsum("bd,kd->kb", x_in, params["a"])


@pytest.mark.parametrize("process", [VPProcess(VPConfig(timesteps=100)), EDMProcess()])
def test_posterior_mean_is_the_gaussian_posterior_mean(process):
    sd = data_scale(process)
    x = torch.randn(7, 3, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 3.0, 30.0, 200.0], dtype=torch.float64)[:, None]
    want = sd * x / (sd**2 + sigma**2)  # E[x0 | x] / sd for x0 ~ N(0, sd^2)
    got = classifier_input(process, sigma, x, "posterior-mean")
    torch.testing.assert_close(got, want)
    c_in = classifier_input(process, sigma, x, "c_in")
    torch.testing.assert_close(c_in, process.c_in(sigma) * x)
    # both are x / sd at sigma -> 0
    torch.testing.assert_close(got[0], c_in[0], rtol=1e-3, atol=0)


def test_data_scale_of_the_processes():
    assert data_scale(VPProcess()) == 1.0
    assert data_scale(EDMProcess(EDMConfig(sigma_data=0.5))) == 0.5
    assert data_scale(object()) == 1.0


def test_guidance_term_decays_like_one_over_sigma_with_the_posterior_mean():
    """``sigma |grad_x log C|`` (the guidance term in epsilon units, what the r-ELBO charges)
    of one fixed linear logit: O(1) at every level through ``c_in``, <= |a| / 2 and ~ sd / sigma
    |a| through the posterior mean."""
    process = EDMProcess(EDMConfig(sigma_data=0.5))
    net = Linear()
    x = torch.zeros(1, 3, dtype=torch.float64)  # the logit's gradient is a; where does not matter
    a = float(net.a.detach().norm())
    for sigma in (0.5, 5.0, 50.0):
        terms = {}
        for kind in ("c_in", "posterior-mean"):
            clf = TimeClassifier(net, process, kind).double()
            xg = x.clone().requires_grad_(True)
            s = torch.full((1,), sigma, dtype=torch.float64)
            grad = torch.autograd.grad(clf(xg, s).sum(), xg)[0]
            terms[kind] = sigma * float(grad.norm())
        assert terms["c_in"] == pytest.approx(a * sigma / math.sqrt(sigma**2 + 0.25))
        assert terms["posterior-mean"] == pytest.approx(a * 0.5 * sigma / (sigma**2 + 0.25))
        assert terms["posterior-mean"] <= 0.5 * a + 1e-12
    assert terms["posterior-mean"] < 0.01 * terms["c_in"]  # at sigma = 50


def test_stacked_path_uses_the_members_input():
    process = VPProcess(VPConfig(timesteps=100))
    members = [
        TimeClassifier(Linear(seed=s), process, "posterior-mean").eval().requires_grad_(False)
        for s in (0, 1, 2)
    ]
    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.tensor([0.1, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64)
    loop = GuidedDenoiser(lambda x, s, **c: x, members, batched=False).guidance(x, sigma)
    batched = GuidedDenoiser(lambda x, s, **c: x, members, batched=True).guidance(x, sigma)
    torch.testing.assert_close(batched, loop, rtol=1e-10, atol=1e-12)
    want = sum(m.log_prob(x, sigma) for m in members)
    torch.testing.assert_close(StackedClassifiers(members).log_prob(x, sigma), want)
    mixed = [*members[:2], TimeClassifier(Linear(seed=3), process).eval()]
    assert not stackable(mixed)  # another input: not one batched network


@pytest.mark.parametrize("process", [VPProcess(VPConfig(timesteps=100)), EDMProcess()])
def test_tapered_is_c_in_up_to_the_data_scale_then_decays(process):
    sd = data_scale(process)
    x = torch.randn(6, 3, dtype=torch.float64)
    sigma = torch.tensor([0.01, 0.3, 1.0, 3.0, 30.0, 300.0], dtype=torch.float64)[:, None] * sd
    got = classifier_input(process, sigma, x, "tapered")
    want = process.c_in(sigma) * x * torch.where(sigma <= sd, 1.0, sd / sigma)
    torch.testing.assert_close(got, want)
    low = sigma[:, 0] <= sd
    torch.testing.assert_close(got[low], classifier_input(process, sigma, x, "c_in")[low])
    # in epsilon units sigma * c_in * sd / sigma = sd * c_in(sigma): O(1 / sigma)
    scale = (sigma * got / x)[:, 0]
    assert float(scale[-1]) < 0.01 and float(scale[-1]) < float(scale[3])


@pytest.mark.parametrize("process", [VPProcess(VPConfig(timesteps=100)), EDMProcess()])
def test_denoised_input_with_the_gaussian_denoiser_is_the_posterior_mean(process):
    """On N(0, sigma_d^2) data the exact denoiser is the Gaussian posterior mean, so the
    ``denoised`` input gives the ``posterior-mean`` classifier's logits and guidance (through
    D's Jacobian, by autograd), single and stacked; D is used, not owned."""
    sd = data_scale(process)
    calls = []

    def gaussian_denoiser(x, sigma, **cond):
        calls.append(torch.is_grad_enabled() and x.requires_grad)
        s2 = broadcast_sigma(sigma, x) ** 2
        return sd**2 / (sd**2 + s2) * x

    def members(kind, den=None):
        return [
            TimeClassifier(Linear(seed=s), process, kind, den).eval().requires_grad_(False)
            for s in (0, 1, 2)
        ]

    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.tensor([0.03, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64) * sd
    den, pm = members("denoised", gaussian_denoiser), members("posterior-mean")
    with torch.no_grad():
        torch.testing.assert_close(den[0](x, sigma), pm[0](x, sigma))
    assert calls == [False]  # no graph through D outside guidance
    for batched in (False, True):
        got = GuidedDenoiser(lambda x, s, **c: x, den, batched=batched).guidance(x, sigma)
        want = GuidedDenoiser(lambda x, s, **c: x, pm, batched=batched).guidance(x, sigma)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert calls[-1] is True and StackedClassifiers(den).vjp_fn is None
    assert "denoiser" not in dict(den[0].named_modules()) and not any(
        "denoiser" in k for k in den[0].state_dict()
    )
    with pytest.raises(ValueError, match="needs the base denoiser"):
        TimeClassifier(Linear(), process, "denoised")


class Bumpy(Linear):
    """``f(u) = sum tanh(a * u)``: its input gradient depends on where it is read."""

    def forward(self, x_in, c_noise, **cond):
        return torch.tanh(x_in * self.a).sum(-1)


@pytest.mark.parametrize("process", [VPProcess(VPConfig(timesteps=100)), EDMProcess()])
def test_denoised_st_input_reads_d_and_takes_the_posterior_means_gradient(process):
    """``denoised-st``: the network reads ``D(x) / sigma_d``; its gradient is the
    ``posterior-mean`` input's, ``c(sigma) f'(u)`` at ``u = D(x) / sigma_d`` (not through
    ``D``'s Jacobian); with the exact Gaussian denoiser it is the ``posterior-mean``
    classifier, value and guidance; ``D`` runs without a graph."""
    sd = data_scale(process)
    calls = []

    def gaussian(x, sigma, **cond):
        calls.append(torch.is_grad_enabled())
        return sd**2 / (sd**2 + broadcast_sigma(sigma, x) ** 2) * x

    def bent(x, sigma, **cond):  # a denoiser that is not the Gaussian posterior mean
        return gaussian(x, sigma) + 0.3 * sd * torch.sin(3 * x)

    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.tensor([0.03, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64) * sd
    pm = TimeClassifier(Bumpy(seed=1), process, "posterior-mean").eval()
    st = TimeClassifier(Bumpy(seed=1), process, "denoised-st", gaussian).eval()
    with torch.no_grad():
        torch.testing.assert_close(st(x, sigma), pm(x, sigma))
    got = GuidedDenoiser(lambda x, s, **c: x, [st], batched=False).guidance(x, sigma)
    want = GuidedDenoiser(lambda x, s, **c: x, [pm], batched=False).guidance(x, sigma)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert calls and not any(calls)  # D never records a graph
    st = TimeClassifier(Bumpy(seed=1), process, "denoised-st", bent).eval()
    u = bent(x, sigma) / sd
    a = st.network.a.detach()
    with torch.no_grad():
        torch.testing.assert_close(st(x, sigma), torch.tanh(u * a).sum(-1))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(st(xg, sigma).sum(), xg)
    c = classifier_input(process, broadcast_sigma(sigma, x), torch.ones_like(x), "posterior-mean")
    torch.testing.assert_close(grad, c * a * (1 - torch.tanh(u * a) ** 2))
    with pytest.raises(ValueError, match="'denoised-st' needs the base denoiser"):
        TimeClassifier(Linear(), process, "denoised-st")


@pytest.mark.parametrize("batched", [False, True])
def test_guided_step_evaluates_the_base_once_for_denoised_st_classifiers(batched):
    """``GuidedDenoiser.forward`` evaluates the base ``D`` once per call: ``denoised-st``
    members reading that base at that point take its value, with the result of evaluating
    them on their own (``guidance`` outside a step: each member calls ``D`` again); a member
    evaluated at another level (a noise floor) or reading another denoiser calls its own."""
    from genneg.window import windowed

    process = EDMProcess()
    sd = data_scale(process)
    calls = []

    def bent(x, sigma, **cond):  # not the Gaussian posterior mean, so the value matters
        calls.append(x.shape[0])
        s2 = broadcast_sigma(sigma, x) ** 2
        return sd**2 / (sd**2 + s2) * x + 0.3 * sd * torch.sin(3 * x)

    def members(den):
        return [TimeClassifier(Bumpy(seed=s), process, "denoised-st", den).eval() for s in (1, 2)]

    x = torch.randn(5, 3, dtype=torch.float64)
    sigma = torch.tensor([0.03, 0.5, 2.0, 10.0, 100.0], dtype=torch.float64) * sd
    guided = GuidedDenoiser(bent, members(bent), batched=batched)
    with torch.no_grad():
        want = bent(x, sigma) + guided.guidance(x, sigma)
        own = 1 if batched else 2  # a stack of one architecture reads D once for all
        assert len(calls) == 1 + own  # the base, then the members' own D
        calls.clear()
        got = guided(x, sigma)
    assert len(calls) == 1
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # a noise floor moves the members' level: they evaluate D at the floor themselves
    floored = GuidedDenoiser(bent, windowed(members(bent), (), floor=1.0), batched=batched)
    calls.clear()
    with torch.no_grad():
        got = floored(x, sigma)
        n_calls = len(calls)
        want = bent(x, sigma) + floored.guidance(x, sigma)
    assert n_calls == 3
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # members reading another denoiser (here: the same function, another object) keep theirs

    def other(x, sigma, **cond):
        return bent(x, sigma)

    calls.clear()
    with torch.no_grad():
        GuidedDenoiser(bent, members(other), batched=batched)(x, sigma)
    assert len(calls) == 1 + own


def broadcast_sigma(sigma, x):
    return torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))


def test_unknown_input_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown classifier input 'sqrt'"):
        TimeClassifier(Linear(), EDMProcess(), "sqrt")
    with pytest.raises(ValueError, match="choose from"):
        classifier_input(EDMProcess(), torch.ones(1), torch.ones(1), "sqrt")


def test_config_rejects_an_unknown_input():
    from genneg import config as config_mod

    def config(input):
        return config_mod.from_dict(
            {
                "name": "x",
                "dataset": {"name": "d"},
                "oracle": {"name": "o"},
                "denoiser": {"name": "n"},
                "classifier": {"network": {"name": "c"}, "input": input},
            }
        )

    assert config("posterior-mean").classifier.input == "posterior-mean"
    with pytest.raises(Exception, match="input"):
        config("sqrt")


@pytest.fixture(scope="module")
def gaussian_synthetic_set():
    """Algorithm 1's synthetic set of the exact Gaussian base, drawn once for every input."""
    return synthetic_set()


@pytest.mark.parametrize("kind", ["posterior-mean", "tapered"])
def test_trained_classifier_targets_the_truncated_base(kind, gaussian_synthetic_set):
    """The pipeline of tests/test_classifier_quality.py (Gaussian base, halfspace oracle,
    Algorithm 1's synthetic set, Eq. 13) with the posterior-mean or tapered input: the
    trained classifier is within 0.05 of the closed-form Bayes classifier at the sampler's
    levels, its guidance term in epsilon units on valid data is close to the Bayes
    classifier's, and the guided samples follow the base truncated to the valid set (Theorem 1)."""
    process, synth = gaussian_synthetic_set
    torch.manual_seed(0)  # the network's initial weights, whichever input runs first
    clf = trained_classifier(process, synth, kind)
    g = torch.Generator().manual_seed(4)
    x0 = DATA.sample(4000, g)
    x0 = x0[x0[:, 0] > 0]  # valid data, where Corollary 1.1 and the r-ELBO look
    for sigma in process.sampling_sigmas(32)[:-1].tolist():
        xt = (x0 + sigma * torch.randn(x0.shape, generator=g)).requires_grad_(True)
        s = torch.full((len(xt),), sigma)
        logc = F.logsigmoid(clf(xt, s))
        exact = torch.log(bayes(xt, torch.tensor(sigma)).clamp_min(1e-30))
        grad = torch.autograd.grad(logc.sum(), xt)[0]
        grad_exact = torch.autograd.grad(exact.sum(), xt)[0]
        assert float((logc.exp() - exact.exp()).detach().abs().mean()) < 0.05, sigma
        term, term_exact = sigma * grad, sigma * grad_exact
        assert float((term - term_exact).abs().mean()) < 0.05 + 0.2 * float(term_exact.abs().mean())
    sigmas = process.sampling_sigmas(32)
    guided = edm_heun(
        GuidedDenoiser(DATA.denoiser, [clf]), process.sample_prior((3000, 1), g), sigmas
    )
    ref = DATA.sample(20_000, g)
    ref = ref[ref[:, 0] > 0][:3000]
    assert stats.ks_2samp(guided[:, 0].numpy(), ref[:, 0].numpy()).pvalue > 0.01
    assert float((guided[:, 0] <= 0).float().mean()) < 0.02
