"""The discrete VP / DDPM process (Ho et al. 2020) written in genneg's sigma coordinates.

DDPM's ``x_t^vp = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` is ``x = x0 + sigma_t eps`` scaled
by ``sqrt(abar_t)``, with ``sigma_t = sqrt((1 - abar_t) / abar_t)``; so
``x_vp = x / sqrt(1 + sigma^2)``.
A network trained as DDPM (epsilon- or x0-prediction, integer step ``t``) becomes a denoiser
``D(x; sigma)`` by that change of coordinates. The schedule arithmetic is float64, as
improved-diffusion and MDM do it, so an MDM checkpoint samples as upstream.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch
from torch import nn

from genneg import rng
from genneg.diffusion.edm import PreconditionedDenoiser

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0")


@attrs.frozen(kw_only=True)
class VPConfig:
    """A DDPM beta schedule and the network's prediction target."""

    timesteps: int = attrs.field(default=1000, validator=attrs.validators.gt(1))
    schedule: str = attrs.field(default="linear", validator=attrs.validators.in_(SCHEDULES))
    prediction: str = attrs.field(default="eps", validator=attrs.validators.in_(PREDICTIONS))


def beta_schedule(name: str, timesteps: int) -> np.ndarray:
    """DDPM betas in float64: ``linear`` (Ho et al., scaled to ``timesteps`` as in
    improved-diffusion) or ``cosine`` (Nichol & Dhariwal, Eq. 17, betas clipped at 0.999)."""
    if name == "linear":
        scale = 1000 / timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=np.float64)
    if name == "cosine":

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), 0.999)
                for i in range(timesteps)
            ],
            dtype=np.float64,
        )
    raise ValueError(f"unknown beta schedule {name!r}; choose from {SCHEDULES}")


class VPProcess:
    """DDPM in sigma coordinates: preconditioning, training noise, schedule and posterior."""

    kind = "vp"

    def __init__(self, config: VPConfig | None = None):
        self.config = config or VPConfig()
        self.betas = beta_schedule(self.config.schedule, self.config.timesteps)
        self.alphas_cumprod = np.cumprod(1.0 - self.betas)
        #: sigma_t for t = 0 .. T-1, increasing (float64).
        self.sigmas64 = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)
        self.sigma_min = float(self.sigmas64[0])
        self.sigma_max = float(self.sigmas64[-1])
        self._log_sigmas = torch.from_numpy(np.log(self.sigmas64))

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    # --- coordinates ---
    def c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        """x_vp = x / sqrt(1 + sigma^2)."""
        return 1.0 / torch.sqrt(1.0 + sigma**2)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The (fractional) DDPM step of ``sigma``, by interpolation of ln sigma; exact integers
        on the schedule's own levels (also when ``sigma`` was rounded to float32)."""
        log_sig = torch.log(sigma.double().clamp_min(1e-30)).cpu()
        ls = self._log_sigmas
        idx = torch.searchsorted(ls, log_sig).clamp(1, len(ls) - 1)
        lo, hi = ls[idx - 1], ls[idx]
        w = ((log_sig - lo) / (hi - lo)).clamp(0, 1)
        t = (idx - 1).double() + w
        # Snap to the integer step when within float32 round-off of one (a float32 sigma is
        # off by ~1e-7 in ln sigma; adjacent levels are >= ~1e-3 apart), so networks that
        # index embeddings by integer t (MDM) see exactly the step they were trained on.
        rounded = torch.round(t)
        t = torch.where((t - rounded).abs() < 1e-3, rounded, t)
        return t.to(device=sigma.device, dtype=torch.float32)

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.sigma_to_t(sigma)

    def precondition(self, network: nn.Module) -> VPDenoiser:
        """Wrap a DDPM network ``F(x_vp, t)`` into a denoiser ``D(x, sigma, **cond)``."""
        return VPDenoiser(network, self)

    # --- training ---
    def sample_training_t(self, n: int, generator=None, device=None) -> torch.Tensor:
        return rng.randint(self.timesteps, (n,), generator, device)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.sigmas64).to(t.device)[t.long()].float()

    def sample_training_sigma(self, n: int, generator=None, device=None) -> torch.Tensor:
        """DDPM's uniform step ``t``, as its sigma."""
        return self.t_to_sigma(self.sample_training_t(n, generator, device))

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """DDPM's "simple" loss in x0 units: ``|eps - eps_hat|^2 = |x0 - D|^2 / sigma^2`` for
        epsilon-prediction, ``|x0 - x0_hat|^2`` for x0-prediction (MDM)."""
        if self.config.prediction == "eps":
            return 1.0 / sigma**2
        return torch.ones_like(sigma)

    def sample_classifier_sigma(self, n: int, generator=None, device=None) -> torch.Tensor:
        """Guidance classifiers see the same uniform ``t`` the sampler visits."""
        return self.sample_training_sigma(n, generator, device)

    # --- sampling ---
    def sampling_sigmas(self, steps: int | None = None, device=None) -> torch.Tensor:
        """Sigmas of ``steps`` evenly spaced DDPM steps (all ``T`` by default), descending,
        followed by 0 (improved-diffusion's ``space_timesteps``)."""
        steps = steps or self.timesteps
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        ts = np.unique(np.round(np.linspace(0, self.timesteps - 1, steps)).astype(np.int64))
        sig = self.sigmas64[ts][::-1].copy()
        return torch.cat([torch.from_numpy(sig), torch.zeros(1, dtype=torch.float64)]).to(device)

    def sample_prior(self, shape, generator=None, device=None) -> torch.Tensor:
        """x_vp ~ N(0, I) at t = T-1, i.e. x = sqrt(1 + sigma_max^2) * N(0, I)."""
        return self.prior_std() * rng.randn(shape, generator, device)

    def prior_std(self) -> float:
        return math.sqrt(1.0 + self.sigma_max**2)


class VPDenoiser(PreconditionedDenoiser):
    """``D(x; sigma)`` from a DDPM network: ``x - sigma * eps_hat`` or ``x0_hat``."""

    def output(self, x, s, out):
        if self.process.config.prediction == "eps":
            return x - s * out
        return out
