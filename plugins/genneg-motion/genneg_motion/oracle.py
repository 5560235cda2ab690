"""The ground-penetration oracle on recovered joints (Sec. 4.3).

A frame infracts when any of its 22 joints is more than ``threshold`` metres below the floor
(``y = 0``; HumanML3D puts the floor at each motion's lowest joint, so real motions never go
below it). A motion infracts when any of its real frames does. The per-frame labels
(``element_valid``, padded frames True) give the paper's "Inf. per step" (Table 2).

Default threshold: 1 cm. The paper does not state its threshold; 1 cm ignores float round-off
and sub-centimetre jitter but counts every visible penetration. On the synthetic preset's
baseline it gives rates of Table 2's order (about 20 % of motions, 2-3 % of frames).
"""

from __future__ import annotations

import torch

from genneg import Oracle, OracleResult
from genneg_motion.features import joint_heights
from genneg_motion.splits import denormalise

CATEGORY = "ground_penetration"
DEFAULT_THRESHOLD = 0.01


def frame_penetration(features: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool ``[B, T]``: frames whose lowest joint is below ``-threshold``."""
    return joint_heights(features).amin(dim=-1) < -threshold


class GroundPenetrationOracle(Oracle):
    """Labels motions (normalised HumanML3D features with ``cond`` as in
    :mod:`genneg_motion.splits`) by ground penetration of their joints."""

    categories = (CATEGORY,)

    def __init__(self, threshold: float = DEFAULT_THRESHOLD):
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 metres, got {threshold}")
        self.threshold = float(threshold)

    @torch.no_grad()
    def label(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> OracleResult:
        feats = denormalise(x, cond)
        bad = frame_penetration(feats, self.threshold)
        mask = cond.get("mask")
        if mask is not None:
            bad = bad & mask
        infracts = bad.any(dim=1)
        return OracleResult(valid=~infracts, categories={CATEGORY: infracts}, element_valid=~bad)
