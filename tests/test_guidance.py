import torch
from torch import nn

from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.guidance import GuidedDenoiser, TimeClassifier, log_prob_from_logits


class QuadraticLogit(nn.Module):
    """logit = a . x_in + b * c_noise + c |x_in|^2 (per sample)."""

    granularity = "sample"

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(3, generator=g))
        self.b = nn.Parameter(torch.randn(1, generator=g))

    def forward(self, x_in, c_noise, **cond):
        return x_in @ self.a + self.b * c_noise - 0.3 * (x_in**2).sum(-1)


class PerAgentLogit(nn.Module):
    granularity = "element"

    def forward(self, x_in, c_noise, **cond):
        return x_in.sum(-1) + c_noise[:, None]


def base(x, sigma, **cond):
    return 0.5 * x


def finite_difference_log_c(model, x, sigma, cond, h=1e-3):
    grad = torch.zeros_like(x, dtype=torch.float64)
    flat = x.reshape(-1)
    for i in range(flat.numel()):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += h
        minus[i] -= h
        lp = model.log_prob(plus.reshape(x.shape), sigma, **cond).sum()
        lm = model.log_prob(minus.reshape(x.shape), sigma, **cond).sum()
        grad.view(-1)[i] = (lp - lm) / (2 * h)
    return grad


def test_guided_denoiser_matches_finite_differences():
    """D_guided - D = sigma^2 * grad log C (Eq. 9) for a stack of two classifiers."""
    for process in (EDMProcess(), VPProcess(VPConfig(timesteps=100))):
        clfs = [TimeClassifier(QuadraticLogit(s), process).double() for s in (1, 2)]
        model = GuidedDenoiser(base, clfs, scale=1.0)
        x = torch.randn(4, 3, dtype=torch.float64)
        sigma = torch.tensor([0.05, 0.5, 2.0, 7.0], dtype=torch.float64)
        with torch.no_grad():  # samplers call denoisers under no_grad
            got = model(x, sigma) - base(x, sigma)
        fd = finite_difference_log_c(model, x, sigma, {})
        assert torch.allclose(got, sigma[:, None] ** 2 * fd, rtol=1e-5, atol=1e-7)


def test_guidance_scale_and_empty_stack():
    process = EDMProcess()
    x, sigma = torch.randn(2, 3), torch.ones(2)
    assert torch.equal(GuidedDenoiser(base, [])(x, sigma), base(x, sigma))
    clf = TimeClassifier(QuadraticLogit(0), process)
    g1 = GuidedDenoiser(base, [clf], scale=1.0).guidance(x, sigma)
    g3 = GuidedDenoiser(base, [clf], scale=3.0).guidance(x, sigma)
    assert torch.allclose(g3, 3 * g1)


def test_per_element_log_prob_sums_real_elements():
    """log C(scene) = sum over real agents of log C_agent (DESIGN, by-agent classifiers)."""
    logits = torch.tensor([[0.5, -1.0, 3.0], [2.0, 0.0, -4.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = log_prob_from_logits(logits, "element", mask)
    ls = torch.nn.functional.logsigmoid
    want = torch.stack([ls(torch.tensor(0.5)) + ls(torch.tensor(-1.0)), ls(torch.tensor(2.0))])
    assert torch.allclose(got, want)
    clf = TimeClassifier(PerAgentLogit(), EDMProcess())
    x = torch.randn(2, 3, 4)
    lp = clf.log_prob(x, torch.ones(2), mask=mask)
    assert lp.shape == (2,)
    # padded agents do not move the guidance
    g = GuidedDenoiser(base, [clf]).guidance(x, torch.ones(2), mask=mask)
    assert torch.all(g[~mask] == 0) and torch.all(g[mask] != 0)
