import math

import torch

from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.elbo import ddpm_elbo, edm_elbo
from tests.gaussian import GaussianData


def test_edm_elbo_is_tight_on_gaussian_data():
    """With the exact denoiser the continuous-time bound equals log p up to the prior and
    decoder mismatch (< 1e-3 nats/dim here): mean ELBO matches the exact mean log-likelihood
    within Monte Carlo error."""
    data = GaussianData(mu=0.3, s=0.7, dim=3)
    g = torch.Generator().manual_seed(0)
    x0 = data.sample(4000, g)
    e = edm_elbo(data.denoiser, x0, {}, EDMProcess(), k=64, generator=g)
    diff = (e - data.log_prob(x0)) / 3
    se = diff.std() / math.sqrt(len(diff))
    assert abs(diff.mean().item()) < max(4 * se.item(), 0.01)
    assert se < 0.02  # the estimator's standard error at k = 64, 4000 points


def test_edm_elbo_is_a_lower_bound_for_a_wrong_denoiser():
    data = GaussianData(mu=0.3, s=0.7, dim=3)
    wrong = GaussianData(mu=0.0, s=1.0, dim=3)
    g = torch.Generator().manual_seed(1)
    x0 = data.sample(2000, g)
    e = edm_elbo(wrong.denoiser, x0, {}, EDMProcess(), k=32, generator=g)
    assert e.mean() < data.log_prob(x0).mean() - 0.1


def exact_ddpm_bound(data, process, x0):
    """E_eps of the DDPM variational bound for Gaussian data, per sample (nats): prior KL,
    decoder log N(x0; E[x0|x_0], beta_0), and sum_t coef_t^2 Var[x0|x_t] / (2 beta~_t)."""
    import numpy as np

    betas, abar = process.betas, process.alphas_cumprod
    abar_prev = np.append(1.0, abar[:-1])
    coef = betas * np.sqrt(abar_prev) / (1 - abar)
    post = betas * (1 - abar_prev) / (1 - abar)
    d = x0.shape[1]
    sig = process.sigmas64
    kl = sum(
        coef[t] ** 2 * data.posterior_var(sig[t]) / (2 * post[t]) for t in range(1, len(betas))
    )
    aT = abar[-1]
    prior = 0.5 * (d * ((1 - aT) - 1 - math.log(1 - aT)) + aT * (x0.double() ** 2).sum(1))
    var0 = betas[0]
    decoder = -0.5 * d * math.log(2 * math.pi * var0) - d * data.posterior_var(sig[0]) / (2 * var0)
    return decoder - prior - d * kl


def test_ddpm_elbo_estimator_is_unbiased():
    """The stratified-t estimator agrees with the bound computed in closed form."""
    data = GaussianData(mu=0.3, s=0.7, dim=3)
    for schedule in ("linear", "cosine"):
        process = VPProcess(VPConfig(timesteps=1000, schedule=schedule))
        g = torch.Generator().manual_seed(2)
        x0 = data.sample(3000, g)
        est = ddpm_elbo(data.denoiser, x0, {}, process, k=64, generator=g).double()
        exact = exact_ddpm_bound(data, process, x0)
        diff = (est - exact) / 3
        se = diff.std() / math.sqrt(len(diff))
        assert abs(diff.mean().item()) < 4 * se.item() + 1e-3, schedule
        # and it is a bound: below the exact log-likelihood
        assert exact.mean() < data.log_prob(x0).double().mean()


def test_masked_elements_do_not_count():
    data = GaussianData(mu=0.0, s=1.0, dim=2)
    g = torch.Generator().manual_seed(3)
    x0 = data.sample(600, g).reshape(200, 3, 2)
    mask = torch.tensor([True, True, False]).expand(200, 3)
    garbage = x0.clone()
    garbage[:, 2] = 1e3
    a = edm_elbo(
        data.denoiser,
        x0,
        {"mask": mask},
        EDMProcess(),
        k=8,
        generator=torch.Generator().manual_seed(4),
    )
    b = edm_elbo(
        data.denoiser,
        garbage,
        {"mask": mask},
        EDMProcess(),
        k=8,
        generator=torch.Generator().manual_seed(4),
    )
    assert torch.allclose(a, b)
