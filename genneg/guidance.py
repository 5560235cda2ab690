"""Time-dependent classifiers and classifier guidance (Eq. 9), stacked.

A guided denoiser adds ``sigma^2 * grad_x log C(x; sigma)`` to ``D``: since the score is
``(D - x) / sigma^2``, that is exactly Eq. (9), ``s_{theta,phi} = s_theta + grad log C``.
Stacking (Algorithm 1, else-branch) sums the log-probabilities of all classifiers; the base
denoiser is evaluated once per call whatever the stack's height.
"""

from __future__ import annotations

import contextvars

import torch
import torch.nn.functional as F
from torch import nn

from genneg.diffusion.shapes import broadcast, per_sample

#: How a classifier's network sees ``x = x0 + sigma eps`` (``classifier.input``):
#: ``c_in``: scaled like the denoiser's input, ``c_in(sigma) x`` (unit variance at every level;
#: the paper's); ``posterior-mean``: the posterior mean of ``x0`` under the process' Gaussian
#: data prior, in data-scale units; ``tapered``: ``c_in`` up to ``sigma = sigma_d``, then
#: decaying like the posterior mean (:func:`classifier_input`); ``denoised``: the base
#: denoiser's ``D(x; sigma)``, the posterior mean under the model (:class:`TimeClassifier`);
#: ``denoised-st``: ``D(x; sigma)``'s value with the ``posterior-mean`` input's gradient
#: (straight through ``D``, :class:`TimeClassifier`).
INPUTS = ("c_in", "posterior-mean", "tapered", "denoised", "denoised-st")
#: the inputs that read the base denoiser (``TimeClassifier(denoiser=...)``)
DENOISED_INPUTS = ("denoised", "denoised-st")
#: the inputs that are ``c(sigma) x`` (:func:`classifier_input`)
LINEAR_INPUTS = ("c_in", "posterior-mean", "tapered")

#: ``(denoiser, x, sigma, D(x; sigma))`` of the guided step in progress
#: (:meth:`GuidedDenoiser.forward`), which the ``denoised-st`` input reads instead of
#: evaluating the same denoiser at the same point again (:func:`_denoised_of_this_step`).
_STEP_DENOISED = contextvars.ContextVar("genneg_step_denoised", default=None)


def _denoised_of_this_step(denoiser, x: torch.Tensor, sigma: torch.Tensor):
    """The guided step's ``D(x; sigma)`` when ``denoiser``, ``x`` (the same storage and
    version: ``x`` or a detached view of it) and ``sigma`` are the step's; else ``None``."""
    memo = _STEP_DENOISED.get()
    if memo is None:
        return None
    d, x0, s0, value = memo
    same_x = (
        x.shape == x0.shape
        and x.data_ptr() == x0.data_ptr()
        and x.stride() == x0.stride()
        and x._version == x0._version
        and x.dtype == x0.dtype
    )
    if d is not denoiser or not same_x or sigma.shape != s0.shape or not torch.equal(sigma, s0):
        return None
    return value


def data_scale(process) -> float:
    """The data's standard deviation the process is built for: EDM's ``sigma_data``; 1 for a
    DDPM (whose data are standardised) and any process without a ``config.sigma_data``."""
    return float(getattr(getattr(process, "config", None), "sigma_data", 1.0))


def classifier_input(process, sigma: torch.Tensor, x: torch.Tensor, kind: str = "c_in"):
    """What a classifier network sees of ``x`` at noise level ``sigma`` (broadcast to ``x``).

    ``c_in``: ``c_in(sigma) x``. ``posterior-mean``: ``E[x0 | x] / sigma_d`` for
    ``x0 ~ N(0, sigma_d^2)``, i.e. ``sigma_d x / (sigma_d^2 + sigma^2) = sigma_d c_in(sigma)^2 x``
    (the same as ``c_in`` times ``sigma_d c_in(sigma)``, which is 1 at ``sigma = 0``).
    ``tapered``: ``c_in(sigma) min(1, sigma_d / sigma) x``: the paper's input up to the data
    scale and the posterior mean's ``1 / sigma`` decay of the guidance term above it (both
    within a factor sqrt(2) of each other there).

    Why it exists: the Bayes classifier's guidance term in epsilon units is, by Tweedie's
    formula, ``sigma grad_x log p(y | x) = (E[x0 | x, y] - E[x0 | x]) / sigma``, which vanishes
    like ``1 / sigma`` as the noise grows; through ``c_in`` a network with a bounded input
    gradient keeps an O(1) term at every level (``sigma c_in(sigma) -> 1``), which the r-ELBO
    charges at each of them (``0.5 |sigma grad log C|^2`` per level, :mod:`genneg.elbo`). With
    the posterior mean ``sigma grad_x = sigma sigma_d c_in^2 grad_u``, at most
    ``|grad_u| / 2`` (at ``sigma = sigma_d``) and ``O(1 / sigma)``, as the Bayes classifier's.
    A network that reads positions from its input (the traffic network's map reads) reads them
    at the posterior-mean position, which at high noise is the data's mean."""
    if kind not in LINEAR_INPUTS:
        raise ValueError(
            f"unknown classifier input {kind!r} for classifier_input; choose from {LINEAR_INPUTS}"
        )
    c = process.c_in(sigma)
    if kind == "posterior-mean":
        c = data_scale(process) * c * c
    elif kind == "tapered":
        c = c * (data_scale(process) / sigma).clamp(max=1.0)
    return c * x


class TimeClassifier(nn.Module):
    """A classifier network with its noise process' input scaling: ``C(x; sigma)``.

    The network sees ``c_noise(sigma)`` and ``x`` scaled as ``input`` says
    (:func:`classifier_input`): by default ``c_in(sigma) * x``, like the denoiser does.

    ``input = "denoised"``: the network sees ``D(x; sigma) / sigma_d``, the base
    ``denoiser``'s estimate of the clean sample (its posterior mean under the model, where
    ``posterior-mean`` takes a Gaussian prior's). Still a function of ``x_t``, so Eq. (13)'s
    optimum is unchanged; the guidance gradient flows through ``D``'s Jacobian, which fades
    at high noise as the Bayes classifier's term does (Tweedie's formula). ``D`` is used, not
    owned: it is no submodule (not in the ``state_dict``, not trained with the classifier) and
    runs without a graph unless ``x`` requires a gradient (guidance). Only the exact
    denoiser's Jacobian damps like Tweedie's: on SUMO traffic an epsilon-predicting network's
    amplified the gradient and broke guidance (docs/traffic.md, "The footprint's corners").

    ``input = "denoised-st"``: the network sees ``D(x; sigma) / sigma_d``'s value, but its
    gradient is taken as the ``posterior-mean`` input's (``x_in = m(x) + sg(D(x) / sigma_d -
    m(x))`` with ``m`` the Gaussian posterior mean and ``sg`` stop-gradient): the model's
    estimate of where each element ends up, which tells an infraction apart better than the
    Gaussian one at every level (docs/traffic.md), with the damped gradient of the
    ``posterior-mean`` input instead of the learned ``D``'s Jacobian. The classifier's value
    is still a function of ``x_t`` (Eq. 13's optimum unchanged); its guidance term is an
    approximation of ``grad_x log C`` that drops ``D``'s Jacobian for the Gaussian one
    (exact when ``D`` is the Gaussian posterior mean; tested), so Theorem 1 holds only to
    that approximation. ``D`` runs without a graph.
    """

    def __init__(self, network: nn.Module, process, input: str = "c_in", denoiser=None):
        super().__init__()
        if input not in INPUTS:
            raise ValueError(f"unknown classifier input {input!r}; choose from {INPUTS}")
        if input in DENOISED_INPUTS and denoiser is None:
            raise ValueError(f"classifier input {input!r} needs the base denoiser (denoiser=)")
        self.network = network
        self.process = process
        self.granularity = network.granularity
        self.input = input
        object.__setattr__(self, "denoiser", denoiser)  # used, not a submodule

    def network_input(self, x: torch.Tensor, sigma: torch.Tensor, **cond) -> torch.Tensor:
        """What the network sees of ``x`` at the per-sample levels ``sigma`` (``cond``: the
        denoiser's conditions, for the ``denoised`` input)."""
        if self.input not in DENOISED_INPUTS:
            return classifier_input(self.process, broadcast(sigma, x), x, self.input)
        if self.input == "denoised":
            with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
                return self.denoiser(x, sigma, **cond) / data_scale(self.process)
        mean = classifier_input(self.process, broadcast(sigma, x), x, "posterior-mean")
        with torch.no_grad():
            denoised = _denoised_of_this_step(self.denoiser, x, sigma)
            if denoised is None:
                denoised = self.denoiser(x, sigma, **cond)
            denoised = denoised / data_scale(self.process)
        return mean + (denoised - mean).detach()  # D's value, the posterior mean's gradient

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """Logits ``[B]`` (per sample) or ``[B, N]`` (per element)."""
        sigma = per_sample(sigma, x)
        x_in = self.network_input(x, sigma, **cond)
        return self.network(x_in, self.process.c_noise(sigma), **cond)

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
        if self.batched:
            from genneg.stacking import stacked_guidance_grad  # stacking.py imports this module

            grad = stacked_guidance_grad(self, x, sigma, **cond)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                grad = torch.autograd.grad(self.log_prob(xg, sigma, **cond).sum(), xg)[0]
        return self.scale * broadcast(sigma, x) ** 2 * grad

    def forward(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        """The guided ``D``. The base's ``D(x; sigma)`` is evaluated once: classifiers with
        the ``denoised-st`` input that read this base at this point take its value
        (:func:`_denoised_of_this_step`) instead of evaluating it again."""
        denoised = self.base(x, sigma, **cond)
        step = (self.base, x, per_sample(sigma, x), denoised.detach())
        token = _STEP_DENOISED.set(step)
        try:
            return denoised + self.guidance(x, sigma, **cond)
        finally:
            _STEP_DENOISED.reset(token)
