"""A guidance window: a classifier that guides only for ``sigma`` in ``[sigma_lo, sigma_hi]``,
and a noise floor: below ``sigma_floor`` the classifier is evaluated at ``sigma_floor``.

Outside the window ``log C`` is taken as the constant 0, so its gradient (the guidance term
of Eq. 9) vanishes there and the stacked model uses the base score at those noise levels.

The floor is for classifiers that are less sure of valid points at the smallest noise levels
than a little above them (measured on the checkerboard: ``-log C`` on held-out valid data is
2-3x larger at sigma = 0.002 than at 0.02, where the Bayes classifier only grows surer as
sigma falls); since ``x_t`` barely differs from ``x_0`` below the floor, ``C(x_t; floor)``
stands in for the optimal classifier there.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genneg.diffusion.shapes import per_sample


class WindowedClassifier(nn.Module):
    """``classifier`` with ``log_prob`` zeroed for ``sigma`` outside ``[lo, hi]`` and evaluated
    at ``max(sigma, floor)``."""

    def __init__(
        self, classifier: nn.Module, lo: float = 0.0, hi: float = math.inf, floor: float = 0.0
    ):
        super().__init__()
        if not 0 <= lo < hi:
            raise ValueError(f"a guidance window needs 0 <= sigma_lo < sigma_hi, got [{lo}, {hi}]")
        if not 0 <= floor < hi:
            raise ValueError(f"sigma_floor must be in [0, sigma_hi), got {floor}")
        self.classifier = classifier
        self.lo, self.hi, self.floor = float(lo), float(hi), float(floor)
        self.granularity = classifier.granularity

    def forward(self, x, sigma, **cond):
        return self.classifier(x, sigma, **cond)

    def log_prob(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        sigma = per_sample(sigma, x)
        inside = (sigma >= self.lo) & (sigma <= self.hi)
        if not inside.any():
            return x.new_zeros(x.shape[0]) + 0.0 * x.reshape(len(x), -1).sum(1)
        logp = self.classifier.log_prob(x, sigma.clamp(min=self.floor), **cond)
        return torch.where(inside, logp, torch.zeros_like(logp))


def windowed(classifiers, window, floor: float = 0.0) -> list:
    """``classifiers`` each wrapped in the window ``[sigma_lo, sigma_hi]`` (a pair; empty: every
    level) with the noise floor ``floor``; unchanged when neither is set."""
    if not window and not floor:
        return list(classifiers)
    if window and len(window) != 2:
        raise ValueError(f"a guidance window is [sigma_lo, sigma_hi], got {list(window)}")
    lo, hi = window if window else (0.0, math.inf)
    return [WindowedClassifier(c, lo, hi, floor) for c in classifiers]
