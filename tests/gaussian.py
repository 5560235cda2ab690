"""Gaussian data, whose denoiser and likelihood are known in closed form."""

import math

import torch


class GaussianData:
    """Data ``N(mu, s^2 I)``; under ``x = x0 + sigma eps`` the exact denoiser is
    ``E[x0 | x] = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)``."""

    def __init__(self, mu=0.3, s=0.7, dim=3):
        self.mu, self.s, self.dim = mu, s, dim

    def denoiser(self, x, sigma, **cond):
        sg = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.s**2 * x + sg**2 * self.mu) / (self.s**2 + sg**2)

    def sample(self, n, generator=None):
        return self.mu + self.s * torch.randn(n, self.dim, generator=generator)

    def log_prob(self, x):
        z = (x - self.mu) / self.s
        return (-0.5 * z**2 - 0.5 * math.log(2 * math.pi * self.s**2)).sum(-1)

    def posterior_var(self, sigma):
        """Var[x0 | x_sigma] per coordinate."""
        return self.s**2 * sigma**2 / (self.s**2 + sigma**2)
