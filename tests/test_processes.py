import math

import numpy as np
import pytest
import torch
from torch import nn

from genneg.diffusion.edm import EDMConfig, EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess, beta_schedule


class EpsNet(nn.Module):
    """A fixed DDPM epsilon network: eps_hat = tanh(x_vp) * (1 + t / 1000)."""

    def forward(self, x_in, c_noise, **cond):
        return torch.tanh(x_in) * (1 + c_noise.reshape(-1, 1) / 1000)


def test_vp_in_sigma_coordinates_matches_ddpm():
    """x = x0 + sigma_t eps with x_vp = x / sqrt(1 + sigma^2) is DDPM's
    sqrt(abar) x0 + sqrt(1 - abar) eps, and D = x - sigma eps_hat is DDPM's x0 estimate."""
    proc = VPProcess(VPConfig(timesteps=1000, schedule="linear"))
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    for t in (0, 10, 500, 999):
        abar = proc.alphas_cumprod[t]
        sigma = proc.t_to_sigma(torch.tensor([t]))
        x = x0 + sigma * eps
        x_vp = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
        assert torch.allclose(proc.c_in(sigma) * x, x_vp.float(), atol=1e-5)
        # the DDPM x0 estimate from eps_hat: (x_vp - sqrt(1-abar) eps_hat) / sqrt(abar)
        denoiser = proc.precondition(EpsNet())
        eps_hat = EpsNet()(x_vp.float(), torch.full((5,), float(t)))
        ddpm_x0 = (x_vp - math.sqrt(1 - abar) * eps_hat) / math.sqrt(abar)
        assert torch.allclose(denoiser(x, sigma.expand(5)), ddpm_x0.float(), atol=1e-4)


def test_sigma_to_t_is_exact_on_the_schedule():
    proc = VPProcess(VPConfig(timesteps=1000, schedule="cosine"))
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(proc.sigma_to_t(proc.t_to_sigma(t)), t.float())
    mid = torch.sqrt(proc.t_to_sigma(torch.tensor([10])) * proc.t_to_sigma(torch.tensor([11])))
    assert 10 < float(proc.sigma_to_t(mid)) < 11


def test_cosine_schedule_follows_nichol_dhariwal():
    betas = beta_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = np.cumprod(1 - betas)
    assert abar[499] == pytest.approx(f(500) / f(0), rel=1e-6)
    assert betas.max() <= 0.999 and betas.dtype == np.float64


def test_linear_schedule_endpoints():
    betas = beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


def test_edm_preconditioning_is_eq_34():
    proc = EDMProcess(EDMConfig(sigma_data=0.5))
    seen = {}

    class Probe(nn.Module):
        def forward(self, x_in, c_noise, **cond):
            seen["x_in"], seen["c_noise"] = x_in, c_noise
            return torch.ones_like(x_in)

    x = torch.randn(2, 2)
    sigma = torch.tensor([0.1, 3.0])
    out = proc.precondition(Probe())(x, sigma)
    s = sigma[:, None]
    assert torch.allclose(seen["x_in"], x / torch.sqrt(s**2 + 0.25))
    assert torch.allclose(seen["c_noise"], torch.log(sigma) / 4)
    assert torch.allclose(out, 0.25 / (s**2 + 0.25) * x + s * 0.5 / torch.sqrt(s**2 + 0.25))


def test_karras_schedule():
    sig = EDMProcess().sampling_sigmas(18)
    assert len(sig) == 19 and sig[-1] == 0
    assert sig[0] == pytest.approx(80.0) and sig[17] == pytest.approx(0.002, rel=1e-4)
    assert (sig[:-1].diff() < 0).all()


def test_vp_sampling_sigmas_respaced():
    proc = VPProcess(VPConfig(timesteps=1000))
    sig = proc.sampling_sigmas(50)
    assert len(sig) == 51 and sig.dtype == torch.float64 and sig[-1] == 0
    assert float(sig[0]) == pytest.approx(proc.sigma_max)
    assert float(sig[-2]) == pytest.approx(proc.sigma_min)


def test_bad_process_options_are_named():
    with pytest.raises(ValueError, match="sigma_min"):
        EDMConfig(sigma_min=10.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="schedule"):
        VPConfig(schedule="quadratic")
