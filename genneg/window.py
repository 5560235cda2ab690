"""A guidance window: a classifier that guides only for ``sigma`` in ``[sigma_lo, sigma_hi]``.

Outside the window ``log C`` is taken as the constant 0, so its gradient (the guidance term
of Eq. 9) vanishes there and the stacked model uses the base score at those noise levels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genneg.diffusion.shapes import per_sample


class WindowedClassifier(nn.Module):
    """``classifier`` with ``log_prob`` zeroed for ``sigma`` outside ``[lo, hi]``."""

    def __init__(self, classifier: nn.Module, lo: float = 0.0, hi: float = math.inf):
        super().__init__()
        if not 0 <= lo < hi:
            raise ValueError(f"a guidance window needs 0 <= sigma_lo < sigma_hi, got [{lo}, {hi}]")
        self.classifier = classifier
        self.lo, self.hi = float(lo), float(hi)
        self.granularity = classifier.granularity

    def forward(self, x, sigma, **cond):
        return self.classifier(x, sigma, **cond)

    def log_prob(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        inside = (sigma >= self.lo) & (sigma <= self.hi)
        if not inside.any():
            return x.new_zeros(x.shape[0]) + 0.0 * x.reshape(len(x), -1).sum(1)
        logp = self.classifier.log_prob(x, sigma, **cond)
        return torch.where(inside, logp, torch.zeros_like(logp))


def windowed(classifiers, window) -> list:
    """``classifiers`` each wrapped in the window ``[sigma_lo, sigma_hi]`` (a pair; empty:
    unchanged)."""
    if not window:
        return list(classifiers)
    if len(window) != 2:
        raise ValueError(f"a guidance window is [sigma_lo, sigma_hi], got {list(window)}")
    lo, hi = window
    return [WindowedClassifier(c, lo, hi) for c in classifiers]
