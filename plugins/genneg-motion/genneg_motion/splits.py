"""Packing variable-length feature sequences into padded, normalised :class:`DataSplit`\\ s.

A motion split holds ``x [B, T, 263]``, normalised as MDM trains (``(f - Mean) / Std``, zero
after the motion's end), and ``cond``:

* ``mask`` bool ``[B, T]``: real frames;
* ``text`` ``[B, 512]``: the caption's embedding (absent when unconditioned);
* ``feat_mean``, ``feat_std`` ``[B, 263]``: the normalisation, carried per row so an oracle can
  read joints from any motion batch without knowing where it came from.
"""

from __future__ import annotations

import torch

from genneg import DataSplit
from genneg_motion import skeleton as sk


def pack(
    features: list[torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    max_frames: int,
    text: torch.Tensor | None = None,
) -> DataSplit:
    """Pad, crop to ``max_frames`` and normalise a list of ``[T_i, 263]`` feature arrays."""
    n = len(features)
    x = torch.zeros(n, max_frames, sk.FEATURE_DIM)
    mask = torch.zeros(n, max_frames, dtype=torch.bool)
    for i, f in enumerate(features):
        f = torch.as_tensor(f, dtype=torch.float32)[:max_frames]
        x[i, : len(f)] = (f - mean) / std
        mask[i, : len(f)] = True
    cond = {
        "mask": mask,
        "feat_mean": mean.expand(n, -1).clone(),
        "feat_std": std.expand(n, -1).clone(),
    }
    if text is not None:
        cond["text"] = text.float()
    return DataSplit(x=x, cond=cond)


def denormalise(x: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
    """Features in metres/radians from normalised ``x [B, T, 263]``."""
    try:
        mean, std = cond["feat_mean"], cond["feat_std"]
    except KeyError:
        raise KeyError(
            "motion batches carry cond['feat_mean'] and cond['feat_std'] (the "
            "normalisation); this batch has neither; build it with "
            "genneg_motion.splits.pack"
        ) from None
    return x * std[:, None, :] + mean[:, None, :]
