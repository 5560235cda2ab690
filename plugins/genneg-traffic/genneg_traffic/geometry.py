"""Vehicle rectangles: corners in numpy, polygons in shapely 2 (vectorised)."""

from __future__ import annotations

import numpy as np
import shapely


def corners(cx, cy, length, width, heading) -> np.ndarray:
    """Corners ``[M, 4, 2]`` (counter-clockwise) of oriented rectangles centred at ``(cx, cy)``
    with ``length`` along the heading (radians, counter-clockwise from +x) and ``width``
    across it."""
    cx, cy, length, width, heading = (
        np.asarray(a, dtype=np.float64).reshape(-1) for a in (cx, cy, length, width, heading)
    )
    c, s = np.cos(heading), np.sin(heading)
    # local corner offsets (+-l/2, +-w/2), counter-clockwise
    lx = np.array([0.5, -0.5, -0.5, 0.5])[None, :] * length[:, None]
    ly = np.array([0.5, 0.5, -0.5, -0.5])[None, :] * width[:, None]
    px = cx[:, None] + c[:, None] * lx - s[:, None] * ly
    py = cy[:, None] + s[:, None] * lx + c[:, None] * ly
    return np.stack([px, py], axis=-1)


def rectangles(cx, cy, length, width, heading) -> np.ndarray:
    """Shapely polygons (object array ``[M]``) of oriented rectangles (see :func:`corners`)."""
    pts = corners(cx, cy, length, width, heading)
    if len(pts) == 0:
        return np.empty(0, dtype=object)
    return shapely.polygons(pts)
