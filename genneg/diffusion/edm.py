"""The EDM noise process (Karras et al. 2022), which defines genneg's coordinates.

A sample at noise level sigma is ``x = x0 + sigma * eps``. A denoiser returns
``D(x; sigma) ~ E[x0 | x]``; the score is ``(D - x) / sigma**2``.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import nn

from genneg import rng
from genneg.diffusion.shapes import broadcast, per_sample

#: Sampling steps when a config leaves them to the process (EDM's 18 levels, 35 Heun NFE).
DEFAULT_STEPS = 18


def _positive(instance, attribute, value):
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


@attrs.frozen(kw_only=True)
class EDMConfig:
    """EDM preconditioning, training noise and sampling schedule."""

    sigma_data: float = attrs.field(default=0.5, validator=_positive)
    sigma_min: float = attrs.field(default=0.002, validator=_positive)
    sigma_max: float = attrs.field(default=80.0, validator=_positive)
    rho: float = attrs.field(default=7.0, validator=_positive)
    p_mean: float = -1.2
    p_std: float = attrs.field(default=1.2, validator=_positive)

    def __attrs_post_init__(self):
        if self.sigma_min >= self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be < sigma_max ({self.sigma_max})")


class EDMProcess:
    """EDM preconditioning (Eq. 34 of the paper, EDM Table 1), loss weighting and schedule."""

    kind = "edm"

    def __init__(self, config: EDMConfig | None = None):
        self.config = config or EDMConfig()
        self.sigma_min = self.config.sigma_min
        self.sigma_max = self.config.sigma_max

    # --- preconditioning (EDM Table 1; the paper's Eq. 34) ---
    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return 1.0 / torch.sqrt(sigma**2 + self.config.sigma_data**2)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.log(sigma) / 4.0

    def c_skip(self, sigma: torch.Tensor) -> torch.Tensor:
        sd2 = self.config.sigma_data**2
        return sd2 / (sigma**2 + sd2)

    def c_out(self, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.config.sigma_data
        return sigma * sd / torch.sqrt(sigma**2 + sd**2)

    def precondition(self, network: nn.Module) -> EDMDenoiser:
        """Wrap a raw network ``F`` into a denoiser ``D(x, sigma, **cond)``."""
        return EDMDenoiser(network, self)

    # --- training ---
    def sample_training_sigma(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Log-normal noise levels, ``ln sigma ~ N(P_mean, P_std^2)`` (EDM Sec. 5)."""
        z = rng.randn(n, generator, device)
        return torch.exp(self.config.p_mean + self.config.p_std * z)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) of EDM, which makes the effective target unit-variance."""
        sd = self.config.sigma_data
        return (sigma**2 + sd**2) / (sigma * sd) ** 2

    def sample_classifier_sigma(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Noise levels for guidance-classifier training: log-uniform on [sigma_min, sigma_max].

        Our choice where the paper is silent: guidance is applied at every level the sampler
        visits, and Karras' schedule visits log-spaced levels, so every octave gets equal weight.
        """
        u = rng.rand(n, generator, device)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(lo + (hi - lo) * u)

    # --- sampling ---
    def sampling_sigmas(self, steps: int | None = None, device=None) -> torch.Tensor:
        """Karras' schedule (EDM Eq. 5) of ``steps`` levels (``None``: EDM's default of
        :data:`DEFAULT_STEPS`), followed by 0."""
        steps = DEFAULT_STEPS if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        rho = self.config.rho
        i = torch.arange(steps, dtype=torch.float64, device=device)
        lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
        frac = i / max(steps - 1, 1)
        sig = (hi + frac * (lo - hi)) ** rho
        return torch.cat([sig, sig.new_zeros(1)]).float()

    def sample_prior(self, shape, generator=None, device=None) -> torch.Tensor:
        """x_T ~ N(0, sigma_max^2 I)."""
        return self.sigma_max * rng.randn(shape, generator, device)

    def prior_std(self) -> float:
        return self.sigma_max


class PreconditionedDenoiser(nn.Module):
    """A denoiser ``D(x; sigma)`` around a raw network ``F`` that sees ``c_in(sigma) x`` and
    ``c_noise(sigma)`` (EDM's ``EDMPrecond``, k-diffusion's ``Denoiser``); :meth:`output` turns
    ``F``'s output into the x0 estimate, as the process defines it."""

    def __init__(self, network: nn.Module, process):
        super().__init__()
        self.network = network
        self.process = process

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        p = self.process
        sigma = per_sample(sigma, x)
        s = broadcast(sigma, x)
        return self.output(x, s, self.network(p.c_in(s) * x, p.c_noise(sigma), **cond))

    def output(self, x: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EDMDenoiser(PreconditionedDenoiser):
    """``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` (EDM Table 1; the paper's Eq. 34)."""

    def output(self, x, s, out):
        p = self.process
        return p.c_skip(s) * x + p.c_out(s) * out
