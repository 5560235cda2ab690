"""Shape helpers: per-sample noise levels, and masks over padded elements (agents, frames)."""

from __future__ import annotations

import torch


def per_sample(sigma, x: torch.Tensor) -> torch.Tensor:
    """``sigma`` (a number, ``[]`` or ``[B]``) as a ``[B]`` tensor on ``x``'s device and dtype."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    return sigma.reshape(-1)


def broadcast(sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A ``[B]`` tensor reshaped to ``[B, 1, ..., 1]`` to broadcast over ``x``."""
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


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
