"""The three losses of Gen-neG, as callables that hold their noise-level distribution and
weighting (as EDM's ``loss.py`` does):

* :class:`DenoisingLoss`: denoising score matching, Eq. (5) (the baseline DM);
* :class:`ClassifierLoss`: the importance-weighted BCE of Eq. (13) and its ablations;
* :class:`DistillationLoss`: the student-teacher regression of Eq. (14).

Each draws the whole batch's noise levels and noise from the generator first and then
evaluates the networks through :func:`genneg.distributed.sharded_mean`: in one process on
every row, under torchrun on this rank's rows only, scaled so that the ranks' shares add up to
the one-process loss. One code path serves both, so a plugin's trainer (a registered distiller,
say) gets sharding by calling them.

Errors are means over real coordinates (padded agents or frames, ``cond["mask"]`` False, do not
count), then over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genneg import rng
from genneg.components import index_cond
from genneg.diffusion.shapes import broadcast, masked_sum, real_dims
from genneg.distributed import sharded_mean

#: ``is``: Gen-neG (Eq. 13); ``no-is``: balanced set, equal weights (the paper's "w/o IS");
#: ``imbalanced``: the natural label ratio, equal weights (App. C.2).
WEIGHTINGS = ("is", "no-is", "imbalanced")


def _regression(process, model, xt, x0, cond, sigma, target_fn):
    """``mean lambda(sigma) |model(x_t; sigma) - target|^2`` (per real coordinate), sharded."""

    def mean_fn(rows):
        x, s, c = xt[rows], sigma[rows], index_cond(cond, rows)
        target = target_fn(x, s, c, rows)
        err = broadcast(process.loss_weight(s), x) * (model(x, s, **c) - target) ** 2
        return (masked_sum(err, c) / real_dims(x0[rows], c)).mean()

    return sharded_mean(mean_fn, x0.shape[0])


class DenoisingLoss:
    """Eq. (5) in the denoiser's x0 units: ``E[lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2]``
    with the process' training noise levels and weighting (EDM's ``EDMLoss``; DDPM's "simple"
    loss for VP)."""

    def __init__(self, process):
        self.process = process

    def __call__(self, denoiser, x0, cond, generator=None) -> torch.Tensor:
        sigma = self.process.sample_training_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        xt = x0 + broadcast(sigma, x0) * noise
        return _regression(
            self.process, denoiser, xt, x0, cond, sigma, lambda x, s, c, rows: x0[rows]
        )


class DistillationLoss:
    """Eq. (14): ``E_{x0 ~ q, sigma}[gamma(sigma) |s_teacher - s_student|^2]`` on noised true
    data. Since ``|s_teacher - s_student|^2 = |D_teacher - D_student|^2 / sigma^4``, we regress
    in denoiser space with the process' training weight ``lambda(sigma)`` as gamma (the weighting
    of the baseline's Eq. 5) and its training noise levels. The teacher (a stacked, guided model)
    is evaluated without a graph through it."""

    def __init__(self, process):
        self.process = process

    def __call__(self, student, teacher, x0, cond, generator=None) -> torch.Tensor:
        sigma = self.process.sample_training_sigma(x0.shape[0], generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, generator, x0.device)
        return _regression(
            self.process,
            student,
            xt,
            x0,
            cond,
            sigma,
            lambda x, s, c, rows: teacher(x, s, **c).detach(),
        )


def label_weights(
    labels: torch.Tensor, alpha: float, weighting: str, pi1: float = 0.5
) -> torch.Tensor:
    """Per-sample importance weights (Eq. 33) for scene labels ``labels`` (bool ``[B]``) from a
    training set whose fraction of positives is ``pi1`` (1/2 for a balanced set). Only ``is``
    reweights: positives by ``alpha / pi1``, negatives by ``(1 - alpha) / (1 - pi1)``, which for
    the balanced set of Algorithm 1 is Eq. (13) up to a factor 2."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
    if weighting != "is":
        return torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 < pi1 < 1.0:
        raise ValueError(f"the training set needs both labels (positive fraction {pi1})")
    w_pos, w_neg = alpha / pi1, (1.0 - alpha) / (1.0 - pi1)
    return torch.where(labels, torch.tensor(w_pos), torch.tensor(w_neg)).to(labels.device)


def weighted_bce(logits, labels, weights, *, element_labels=None, mask=None) -> torch.Tensor:
    """Mean over the batch of ``weight * BCE``.

    Per-sample logits ``[B]`` use the scene labels. Per-element logits ``[B, N]`` use
    ``element_labels`` ``[B, N]`` and sum the elements' BCE over real elements, since
    ``log C(scene) = sum_a log C_a``; the scene's weight applies to all its elements.
    """
    if logits.ndim == 1:
        bce = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    else:
        if element_labels is None:
            raise ValueError("per-element logits need element_labels")
        bce = F.binary_cross_entropy_with_logits(logits, element_labels.float(), reduction="none")
        if mask is not None:
            bce = bce * mask.to(bce.dtype)
        bce = bce.sum(dim=1)
    return (weights * bce).mean()


class ClassifierLoss:
    """Eq. (13): the importance-weighted BCE of a time-dependent classifier on
    ``x_t = x0 + sigma eps`` of labelled model samples (``x0``), with the noise levels of the
    process' ``sample_classifier_sigma``.

    :param alpha: the model's fraction of valid samples (Algorithm 1's class prior).
    :param weighting: ``is`` (Gen-neG), ``no-is`` or ``imbalanced`` (ablations).
    :param pi1: the training set's fraction of positives (1/2 for the balanced set).
    """

    def __init__(self, process, *, alpha: float, weighting: str = "is", pi1: float = 0.5):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
        self.process, self.alpha, self.weighting, self.pi1 = process, alpha, weighting, pi1

    def __call__(
        self, classifier, x0, cond, labels, element_labels=None, generator=None
    ) -> torch.Tensor:
        weights = label_weights(labels, self.alpha, self.weighting, self.pi1)
        sigma = self.process.sample_classifier_sigma(x0.shape[0], generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, generator, x0.device)

        def mean_fn(rows):
            c = index_cond(cond, rows)
            return weighted_bce(
                classifier(xt[rows], sigma[rows], **c),
                labels[rows],
                weights[rows],
                element_labels=None if element_labels is None else element_labels[rows],
                mask=c.get("mask"),
            )

        return sharded_mean(mean_fn, x0.shape[0])
