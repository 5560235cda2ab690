"""Denoising score-matching loss (Eq. 5) in the denoiser's x0 units, and masking helpers."""

from __future__ import annotations

import torch

from genneg import rng
from genneg.diffusion.shapes import broadcast


def element_mask(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """A ``[B, N, 1, ...]`` float mask over ``x`` from ``cond["mask"]`` (all ones without one)."""
    mask = cond.get("mask") if cond else None
    if mask is None:
        return torch.ones((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
    return mask.to(x.dtype).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))


def real_dims(x: torch.Tensor, cond: dict) -> torch.Tensor:
    """Number of real (unmasked) coordinates of each sample, ``[B]``."""
    m = element_mask(x, cond).expand_as(x)
    return m.reshape(x.shape[0], -1).sum(dim=1)


def masked_sum(values: torch.Tensor, cond: dict) -> torch.Tensor:
    """Per-sample sum of ``values`` (shaped like a sample batch) over real coordinates."""
    return (values * element_mask(values, cond)).reshape(values.shape[0], -1).sum(dim=1)


class DenoisingLoss:
    """``E[lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2]`` with the process' noise-level
    distribution and weighting (EDM's ``EDMLoss``; DDPM's "simple" loss for VP). Padded
    elements do not count; the loss is the mean over real coordinates."""

    def __init__(self, process):
        self.process = process

    def per_sample(self, denoiser, x0, cond, generator=None) -> torch.Tensor:
        sigma = self.process.sample_training_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        denoised = denoiser(x0 + broadcast(sigma, x0) * noise, sigma, **cond)
        err = broadcast(self.process.loss_weight(sigma), x0) * (denoised - x0) ** 2
        return masked_sum(err, cond) / real_dims(x0, cond)

    def __call__(self, denoiser, x0, cond, generator=None) -> torch.Tensor:
        return self.per_sample(denoiser, x0, cond, generator).mean()
