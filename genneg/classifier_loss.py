"""The importance-weighted classifier loss of Eq. (13) and its ablations.

For a training set whose label proportions ``pi(y)`` differ from the model's ``p_theta(y)``
(alpha for y = 1), Eq. (33) weights each positive by ``alpha / pi(y=1)`` and each negative by
``(1 - alpha) / pi(y=0)``. With the balanced set of Algorithm 1 (``pi = 1/2``) this is Eq. (13):
``(1/N) sum_{D+} alpha * BCE + (1/N) sum_{D-} (1 - alpha) * BCE``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: ``is``: Gen-neG (Eq. 13); ``no-is``: balanced set, equal weights (the paper's "w/o IS");
#: ``imbalanced``: the natural label ratio, equal weights (App. C.2).
WEIGHTINGS = ("is", "no-is", "imbalanced")


def label_weights(
    labels: torch.Tensor, alpha: float, weighting: str, pi1: float = 0.5
) -> torch.Tensor:
    """Per-sample importance weights (Eq. 33) for scene labels ``labels`` (bool ``[B]``) from a
    training set whose fraction of positives is ``pi1`` (1/2 for a balanced set). Only ``is``
    reweights."""
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
