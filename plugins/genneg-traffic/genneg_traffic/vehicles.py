"""The vehicle-type distribution shared by both data sources (sizes in metres)."""

from __future__ import annotations

import numpy as np

#: name, probability, (mean length, sd), (mean width, sd); roughly SUMO's vClass defaults.
VEHICLE_TYPES = (
    ("passenger", 0.70, (4.5, 0.35), (1.8, 0.08)),
    ("delivery", 0.14, (5.8, 0.50), (2.0, 0.08)),
    ("truck", 0.08, (9.0, 1.50), (2.45, 0.05)),
    ("bus", 0.04, (12.0, 0.50), (2.5, 0.03)),
    ("motorcycle", 0.04, (2.2, 0.15), (0.9, 0.05)),
)


def sample_sizes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (length, width) pairs from the type mixture, clipped to plausible ranges."""
    probs = np.array([t[1] for t in VEHICLE_TYPES])
    kind = rng.choice(len(VEHICLE_TYPES), size=n, p=probs / probs.sum())
    lm = np.array([t[2] for t in VEHICLE_TYPES])[kind]
    wm = np.array([t[3] for t in VEHICLE_TYPES])[kind]
    length = np.clip(rng.normal(lm[:, 0], lm[:, 1]), 1.5, 18.0)
    width = np.clip(rng.normal(wm[:, 0], wm[:, 1]), 0.6, 2.6)
    return length, width
