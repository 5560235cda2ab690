"""Posterior ("Rao-Blackwellised") targets for the classifier loss of Eq. (13).

The loss draws a training point ``x0_i`` (label ``y_i``, importance weight ``w_i``, Eq. 33),
noises it to ``x_t`` and charges ``w_i BCE(C(x_t), y_i)``. Given ``x_t``, which point produced
it is random; since BCE is linear in its target, averaging the label over that posterior,

    p(x_t) = sum_j w_j y_j N(x_t; x0_j, sigma^2) / sum_j w_j N(x_t; x0_j, sigma^2),

leaves the expected loss on the same training set unchanged up to a constant (the same
minimiser, so the classifier still estimates the Bayes classifier of Eq. 13) and removes the
label noise: at high sigma a hard label is nearly a coin flip with odds alpha, the posterior
target is nearly the constant alpha. ``p`` is the kernel Bayes classifier of
:func:`kernel_bayes_log_prob` on the training set. Only for per-sample
classifiers on unconditional data (a condition would have to match between ``x_t`` and
``x0_j``).
"""

from __future__ import annotations

import math

import torch

TARGETS = ("hard", "posterior")


def check_targets(targets: str, data, granularity: str) -> None:
    """Reject a combination the posterior targets do not support, with a clear message."""
    if targets not in TARGETS:
        raise ValueError(f"unknown classifier targets {targets!r}; choose from {TARGETS}")
    if targets == "posterior" and (data.data.cond or granularity != "sample"):
        raise ValueError(
            "classifier.targets='posterior' needs a per-sample classifier on unconditional "
            "data; use 'hard'"
        )


@torch.no_grad()
def posterior_targets(xt, sigma, x0, labels, weights, block: int = 1024) -> torch.Tensor:
    """Soft labels in ``[0, 1]`` for a minibatch: ``x0`` (labels ``labels``, loss weights
    ``weights``) noised to ``xt`` at ``sigma``. Each point's target is the posterior label
    over the points of its block of ``block`` consecutive rows of the batch.

    Exact in expectation: a minibatch is a random (multi)set ``S`` of the training set, and
    the row that made ``x_t`` is uniform on ``S``; given ``S`` and ``x_t``, the posterior of
    its label is the kernel posterior over ``S``, and averaging the label over it leaves the
    expected (weighted) loss unchanged, since BCE is linear in the target (module docstring).
    Blocks cost ``O(batch * block)`` instead of ``O(batch * training set)``."""
    out = []
    for start in range(0, len(xt), block):
        rows = slice(start, start + block)
        log_p = kernel_bayes_log_prob(xt[rows], sigma[rows], x0[rows], labels[rows], weights[rows])
        out.append(log_p[0].exp())
    return torch.cat(out).clamp(0.0, 1.0)


def kernel_bayes_log_prob(xt, sigma, ref_x, ref_labels, ref_weights, chunk: int = 1024):
    """``log C*(x_t)`` and ``log (1 - C*(x_t))`` of the kernel Bayes classifier of the weighted
    empirical mixture ``sum_j w_j N(x_t; x0_j, sigma^2)`` (the module docstring's ``p``; the
    reference of :mod:`genneg.diagnostics`), and the effective number of reference points per
    query. ``xt`` is
    ``[Q, ...]``, ``sigma`` ``[Q]``; differentiable in ``xt``."""
    ref = ref_x.reshape(len(ref_x), -1)
    logw = torch.log(ref_weights.clamp_min(1e-30))
    pos = ref_labels.bool()
    out_pos, out_neg, out_ess = [], [], []
    for start in range(0, len(xt), chunk):
        q = xt[start : start + chunk].reshape(min(chunk, len(xt) - start), -1)
        s = sigma[start : start + chunk]
        d2 = torch.cdist(q, ref).pow(2)  # [q, n]
        logk = -d2 / (2 * s[:, None] ** 2) + logw[None]
        total = torch.logsumexp(logk, dim=1)
        lp = torch.logsumexp(logk.masked_fill(~pos[None], -math.inf), dim=1) - total
        ln = torch.logsumexp(logk.masked_fill(pos[None], -math.inf), dim=1) - total
        k = torch.softmax(logk.detach(), dim=1)
        out_pos.append(lp)
        out_neg.append(ln)
        out_ess.append(1.0 / (k**2).sum(1))
    return torch.cat(out_pos), torch.cat(out_neg), torch.cat(out_ess)
