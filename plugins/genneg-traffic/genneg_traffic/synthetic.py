"""A procedural data source that needs no SUMO: random road layouts with vehicles in lanes.

Each synthetic *city* has its own style (how many straight roads, grid-like or free angles,
lanes per direction, an optional ring road, traffic density), drawn from its seed. A snapshot
places vehicles along every lane (right-hand traffic) with random gaps, sizes from
:data:`genneg_traffic.vehicles.VEHICLE_TYPES`, a small lateral wiggle and a speed that grows
with the gap; vehicles that would overlap at junctions are removed, so the data itself is
(almost) free of infractions, as simulated traffic is.
"""

from __future__ import annotations

import attrs
import numpy as np
import shapely

from genneg_traffic.geometry import rectangles
from genneg_traffic.scenes import City
from genneg_traffic.vehicles import sample_sizes

LANE_WIDTH = 3.2


@attrs.frozen(kw_only=True)
class SyntheticConfig:
    """Size of the synthetic source: cities (the last one is the test city), snapshots."""

    cities: int = 4
    snapshots: int = 40
    extent: float = 300.0  # side of each city's square, metres
    #: bumper-to-bumper gap between consecutive vehicles of a lane: ``min_gap`` plus an
    #: exponential whose mean (a city's traffic density) is drawn from ``mean_gap``, metres
    min_gap: float = 1.5
    mean_gap: tuple[float, float] = attrs.field(default=(4.0, 20.0), converter=tuple)


def _roads(rng, extent):
    """Centre lines (LineStrings) and lanes per direction of one city's roads."""
    half = extent / 2
    grid = rng.random() < 0.5
    base = rng.uniform(0, np.pi)
    roads = []
    for _ in range(int(rng.integers(3, 7))):
        angle = base + (rng.integers(0, 2) * np.pi / 2 if grid else rng.uniform(0, np.pi))
        d = np.array([np.cos(angle), np.sin(angle)])
        n = np.array([-d[1], d[0]])
        c = n * rng.uniform(-0.6 * half, 0.6 * half)
        roads.append(
            (shapely.LineString([c - 1.5 * half * d, c + 1.5 * half * d]), int(rng.integers(1, 3)))
        )
    if rng.random() < 0.5:
        ring = (
            shapely.Point(rng.uniform(-0.3 * half, 0.3 * half, 2))
            .buffer(rng.uniform(0.3 * half, 0.6 * half), quad_segs=16)
            .exterior
        )
        roads.append((shapely.LineString(ring.coords), 1))
    return roads


def _place(rng, roads, density, min_gap):
    """One snapshot: vehicles [M, 6] along every lane of every road."""
    rows = []
    for line, lanes in roads:
        for side in (-1, 1):  # -1: right of the centre line, travelling along it
            for k in range(lanes):
                lane = shapely.offset_curve(line, side * (k + 0.5) * LANE_WIDTH)
                if lane.is_empty or lane.geom_type != "LineString":
                    continue
                total = lane.length
                s, pos = rng.uniform(0, 20), []
                while True:
                    length, width = sample_sizes(rng, 1)
                    gap = min_gap + rng.exponential(density)
                    s += gap + length[0] / 2
                    if s + length[0] / 2 > total:
                        break
                    pos.append((s, length[0], width[0], gap))
                    s += length[0] / 2
                if not pos:
                    continue
                s, length, width, gap = map(np.array, zip(*pos))
                p = shapely.get_coordinates(shapely.line_interpolate_point(lane, s))
                q = shapely.get_coordinates(shapely.line_interpolate_point(lane, s + 0.5))
                d = q - shapely.get_coordinates(shapely.line_interpolate_point(lane, s - 0.5))
                heading = np.arctan2(d[:, 1], d[:, 0])
                if side == 1:  # left lanes run against the centre line
                    heading = heading + np.pi
                wiggle = rng.normal(0, 0.15, len(s))
                p = p + wiggle[:, None] * np.stack([-np.sin(heading), np.cos(heading)], 1)
                speed = np.clip(2.0 * np.sqrt(gap) + rng.normal(0, 1.0, len(s)), 0, None)
                heading = np.arctan2(np.sin(heading), np.cos(heading))
                rows.append(np.stack([p[:, 0], p[:, 1], length, width, heading, speed], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 6))


def _remove_infractions(v: np.ndarray, road) -> np.ndarray:
    """Drop vehicles not on the road (prepared ``road``), then those overlapping one kept
    earlier (junctions), greedily in order."""
    rects = rectangles(v[:, 0], v[:, 1], v[:, 2], v[:, 3], v[:, 4])
    on_road = shapely.covers(road, rects)
    v, rects = v[on_road], rects[on_road]
    tree = shapely.STRtree(rects)
    i, j = tree.query(rects, predicate="intersects")
    sel = i < j
    i, j = i[sel], j[sel]
    hit = shapely.area(shapely.intersection(rects[i], rects[j])) > 1e-6
    keep = np.ones(len(v), bool)
    for a, b in zip(i[hit], j[hit]):
        if keep[a]:
            keep[b] = False
    return v[keep]


def synthetic_cities(cfg: SyntheticConfig, seed: int, progress: bool = False) -> list[City]:
    """``cfg.cities`` procedural cities, deterministic for ``seed``."""
    from tqdm.auto import tqdm

    cities = []
    for c in tqdm(range(cfg.cities), desc="synthetic cities", disable=not progress):
        rng = np.random.default_rng([seed, c])
        roads = _roads(rng, cfg.extent)
        drivable = shapely.union_all(
            [line.buffer(lanes * LANE_WIDTH, cap_style="flat") for line, lanes in roads]
        )
        half = cfg.extent / 2
        drivable = shapely.intersection(drivable, shapely.box(-half, -half, half, half))
        density = rng.uniform(*cfg.mean_gap)
        road = shapely.buffer(drivable, 0.05)
        shapely.prepare(road)
        snaps = []
        for _ in range(cfg.snapshots):
            v = _remove_infractions(_place(rng, roads, density, cfg.min_gap), road)
            inside = (np.abs(v[:, :2]) < half - 5).all(axis=1)
            snaps.append(v[inside])
        cities.append(City(name=f"synthetic-{c}", drivable=drivable, snapshots=snaps))
    return cities
