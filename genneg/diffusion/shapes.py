"""Shape helpers for per-sample noise levels."""

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
