"""Lane centre lines as raster fields: the lateral offset from the nearest lane and its direction.

A drivable-area polygon says where a car may be, not where it should be: on a multi-lane road
its lanes are invisible. With a city's lane centre lines (directed in the direction of travel,
as SUMO's lane shapes are), every pixel centre of a scene's raster gets three values from its
nearest lane segment: the signed lateral offset from the centre line (metres, positive to the
left of the direction of travel, clipped to ``+-clip``) and the unit direction ``(cos, sin)``
of travel. Across a lane the offset is linear, so bilinear reads locate a car within its lane
to well below a pixel; between two lanes it jumps, where no car belongs.
"""

from __future__ import annotations

import numpy as np
import shapely

#: channels of :func:`lane_fields`
CHANNELS = ("offset", "cos", "sin")


def segments(lines) -> tuple[np.ndarray, np.ndarray]:
    """Start and end points ``[K, 2]`` of every segment of ``lines`` (LineStrings, or a
    geometry whose parts are), in the lines' own direction; zero-length segments dropped."""
    starts, ends = [], []
    for line in shapely.get_parts(np.asarray(lines, dtype=object).ravel()):
        if line.is_empty or line.geom_type != "LineString":
            continue
        xy = np.asarray(line.coords)[:, :2]
        starts.append(xy[:-1])
        ends.append(xy[1:])
    if not starts:
        return np.zeros((0, 2)), np.zeros((0, 2))
    a, b = np.concatenate(starts), np.concatenate(ends)
    keep = np.hypot(*(b - a).T) > 1e-9
    return a[keep], b[keep]


def lane_fields(lines, half: float, res: int, clip: float = 4.0) -> np.ndarray:
    """``[3, res, res]`` float32 fields (:data:`CHANNELS`) at the pixel centres of the raster grid
    of :func:`genneg_traffic.maps.rasterize` over ``[-half, half]^2``. Without any lane: offset
    ``-clip`` and direction ``(0, 0)``."""
    step = 2 * half / res
    centres = -half + step * (np.arange(res) + 0.5)
    xs, ys = np.meshgrid(centres, centres[::-1])
    p = np.stack([xs.ravel(), ys.ravel()], -1)
    a, b = segments(lines)
    out = np.zeros((3, res * res), np.float32)
    if len(a) == 0:
        out[0] = -clip
        return out.reshape(3, res, res)
    tree = shapely.STRtree(shapely.linestrings(np.stack([a, b], 1)))
    hits = tree.query_nearest(shapely.points(p), return_distance=False, all_matches=False)
    nearest = np.zeros(len(p), np.int64)
    nearest[hits[0]] = hits[1]
    a, b = a[nearest], b[nearest]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / (ab**2).sum(-1), 0.0, 1.0)
    q = a + t[:, None] * ab
    dist = np.hypot(*(p - q).T)
    cross = ab[:, 0] * (p - a)[:, 1] - ab[:, 1] * (p - a)[:, 0]  # > 0: left of travel
    direction = ab / np.hypot(*ab.T)[:, None]
    out[0] = np.clip(np.where(cross >= 0, dist, -dist), -clip, clip)
    out[1], out[2] = direction[:, 0], direction[:, 1]
    return out.reshape(3, res, res)
