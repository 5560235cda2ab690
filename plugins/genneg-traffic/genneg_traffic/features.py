"""The per-vehicle feature vector and its normalisation.

A scene is ``x`` ``[B, N, 7]`` with features (Sec. 4.2): centre ``x, y`` (metres, in the scene's
own frame whose origin is the centre of its window), ``length, width`` (metres), ``cos, sin`` of
the heading (radians, counter-clockwise from the +x axis) and ``speed`` (m/s). The model sees
them standardised per feature, ``(value - mean) / std``, with the mean and standard deviation
of the training split's real agents; the statistics are stored with the dataset (``meta.json``)
so that the oracle can map samples back to metres.
"""

from __future__ import annotations

import numpy as np
import torch

FEATURES = ("x", "y", "length", "width", "cos", "sin", "speed")
N_FEATURES = len(FEATURES)


class Normalizer:
    """Per-feature affine standardisation ``z = (v - mean) / std``."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float64).reshape(N_FEATURES)
        self.std = np.asarray(std, dtype=np.float64).reshape(N_FEATURES)
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise ValueError(f"normalisation statistics must be finite: {self.mean}, {self.std}")
        if (self.std <= 0).any():
            raise ValueError(f"normalisation std must be > 0, got {self.std}")

    @classmethod
    def fit(cls, x: np.ndarray, mask: np.ndarray) -> Normalizer:
        """Mean and std of the real agents of ``x`` ``[B, N, 7]`` (``mask`` ``[B, N]``)."""
        real = x[mask]
        if len(real) < 2:
            raise ValueError("need at least two real agents to fit the normalisation")
        std = real.std(axis=0)
        return cls(real.mean(axis=0), np.where(std > 1e-6, std, 1.0))

    @classmethod
    def from_dict(cls, d: dict) -> Normalizer:
        return cls(d["mean"], d["std"])

    def to_dict(self) -> dict:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "std": self.std.tolist()}

    def normalize(self, v):
        """Physical units -> model units (numpy or torch, last axis = features)."""
        mean, std = self._like(v)
        return (v - mean) / std

    def denormalize(self, z):
        """Model units -> physical units (numpy or torch, last axis = features)."""
        mean, std = self._like(z)
        return z * std + mean

    def _like(self, v):
        if isinstance(v, torch.Tensor):
            return (
                torch.as_tensor(self.mean, dtype=v.dtype, device=v.device),
                torch.as_tensor(self.std, dtype=v.dtype, device=v.device),
            )
        return self.mean, self.std


def navigational_to_math(angle_deg):
    """SUMO's navigational angle (degrees, 0 = north, clockwise) -> radians counter-clockwise
    from east: ``theta = pi/2 - radians(angle)``, wrapped to ``[-pi, pi]``."""
    theta = np.pi / 2 - np.radians(np.asarray(angle_deg, dtype=np.float64))
    return np.arctan2(np.sin(theta), np.cos(theta))


def front_to_centre(x_front, y_front, length, heading):
    """SUMO reports the front bumper's middle; the centre is half a length behind it along the
    heading (radians, math convention)."""
    x_front, y_front = np.asarray(x_front, float), np.asarray(y_front, float)
    half = 0.5 * np.asarray(length, float)
    return x_front - half * np.cos(heading), y_front - half * np.sin(heading)


__all__ = [
    "FEATURES",
    "N_FEATURES",
    "Normalizer",
    "navigational_to_math",
    "front_to_centre",
]
