"""Time-dependent classifiers and classifier guidance (Eq. 9), stacked.

A guided denoiser adds ``sigma^2 * grad_x log C(x; sigma)`` to ``D``: since the score is
``(D - x) / sigma^2``, that is exactly Eq. (9), ``s_{theta,phi} = s_theta + grad log C``.
Stacking (Algorithm 1, else-branch) sums the log-probabilities of all classifiers; the base
denoiser is evaluated once per call whatever the stack's height.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genneg.diffusion.shapes import broadcast, per_sample


class TimeClassifier(nn.Module):
    """A classifier network with its noise process' input scaling: ``C(x; sigma)``.

    The network sees ``c_in(sigma) * x`` and ``c_noise(sigma)``, like the denoiser does.
    """

    def __init__(self, network: nn.Module, process):
        super().__init__()
        self.network = network
        self.process = process
        self.granularity = network.granularity

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """Logits ``[B]`` (per sample) or ``[B, N]`` (per element)."""
        sigma = per_sample(sigma, x)
        p = self.process
        return self.network(p.c_in(broadcast(sigma, x)) * x, p.c_noise(sigma), **cond)

    def log_prob(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """``log C(x; sigma)`` per sample ``[B]``; per-element classifiers sum over the real
        elements (``cond["mask"]``)."""
        return log_prob_from_logits(self(x, sigma, **cond), self.granularity, cond.get("mask"))


def log_prob_from_logits(logits, granularity, mask=None) -> torch.Tensor:
    """``log sigmoid`` of the logits; per-element ones summed over real elements."""
    logp = F.logsigmoid(logits)
    if granularity == "sample":
        return logp.reshape(-1)
    if mask is not None:
        logp = logp * mask.to(logp.dtype)
    return logp.sum(dim=1)


class GuidedDenoiser(nn.Module):
    """``D(x; sigma) + scale * sigma^2 * grad_x sum_i log C_i(x; sigma)`` (Eq. 9, stacked)."""

    def __init__(self, base: nn.Module, classifiers=(), scale: float = 1.0, batched: bool = True):
        super().__init__()
        self.base = base
        self.classifiers = nn.ModuleList(classifiers)
        self.scale = scale
        self.batched = batched  # classifiers of one architecture as one network (stacking.py)

    def log_prob(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """Sum of the stack's ``log C_i`` per sample."""
        total = x.new_zeros(x.shape[0])
        for clf in self.classifiers:
            total = total + clf.log_prob(x, sigma, **cond)
        return total

    def guidance(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """``scale * sigma^2 * grad_x log C(x; sigma)``, shaped like ``x``."""
        if len(self.classifiers) == 0 or self.scale == 0:
            return torch.zeros_like(x)
        sigma = per_sample(sigma, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            from genneg.stacking import stacked_log_prob  # stacking.py imports this module

            log_prob = stacked_log_prob if self.batched else GuidedDenoiser.log_prob
            grad = torch.autograd.grad(log_prob(self, xg, sigma, **cond).sum(), xg)[0]
        return self.scale * broadcast(sigma, x) ** 2 * grad

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        return self.base(x, sigma, **cond) + self.guidance(x, sigma, **cond)
