"""Cutting scene windows out of simulated cities into padded tensors.

A *city* is a drivable-area geometry (shapely, metres) and a list of snapshots, each an array
``[M, 6]`` of vehicles (centre x, centre y, length, width, heading in radians, speed). A scene
is a square window (default 80 m) around a centre snapped to a grid, with every vehicle whose
centre lies inside it, in the window's frame; its map is the drivable area within the window
plus a margin, so that vehicles on the window's edge are judged on the real road. Scenes with
the same (city, window) share one map.
"""

from __future__ import annotations

import attrs
import numpy as np
import shapely
import shapely.affinity

from genneg_traffic.lanes import lane_fields
from genneg_traffic.maps import rasterize


@attrs.frozen(kw_only=True)
class WindowConfig:
    """How scenes are cut: window size, agents, map margin, raster resolution, grid snap."""

    size: float = 80.0
    max_agents: int = 16
    min_agents: int = 2
    margin: float = 15.0
    raster: int = 64
    snap: float = 10.0
    windows_per_snapshot: int = 8


@attrs.frozen(kw_only=True)
class City:
    name: str
    drivable: object  # shapely geometry
    snapshots: list  # of [M, 6] arrays
    #: lane centre lines in the direction of travel (shapely lines), or None if unknown
    lanes: object = None


class SceneCutter:
    """Accumulates scenes, maps and rasters over cities."""

    def __init__(self, cfg: WindowConfig):
        self.cfg = cfg
        self.scenes: list[np.ndarray] = []
        self.map_ids: list[int] = []
        self.cities: list[int] = []
        self.maps: list = []
        self.rasters: list[np.ndarray] = []
        #: per map: ``[3, R, R]`` lane fields (:mod:`genneg_traffic.lanes`) or None
        self.lane_fields: list[np.ndarray | None] = []
        self.city_names: list[str] = []

    def add_city(self, city: City, rng: np.random.Generator) -> int:
        """Cut scenes from every snapshot of ``city``; returns how many were added."""
        cfg, half = self.cfg, self.cfg.size / 2
        city_idx = len(self.city_names)
        self.city_names.append(city.name)
        shapely.prepare(city.drivable)
        windows: dict[tuple[int, int], int] = {}
        added = 0
        for snap in city.snapshots:
            if len(snap) < cfg.min_agents:
                continue
            picks = rng.choice(
                len(snap), size=min(cfg.windows_per_snapshot, len(snap)), replace=False
            )
            for p in picks:
                key = (int(np.round(snap[p, 0] / cfg.snap)), int(np.round(snap[p, 1] / cfg.snap)))
                cx, cy = key[0] * cfg.snap, key[1] * cfg.snap
                rel = snap[:, :2] - [cx, cy]
                inside = (np.abs(rel) < half).all(axis=1)
                if inside.sum() < cfg.min_agents:
                    continue
                agents = snap[inside].copy()
                agents[:, :2] = rel[inside]
                if len(agents) > cfg.max_agents:  # keep the ones nearest the centre
                    order = np.argsort(np.hypot(agents[:, 0], agents[:, 1]), kind="stable")
                    agents = agents[order[: cfg.max_agents]]
                if key not in windows:
                    windows[key] = self._add_map(city.drivable, cx, cy, city.lanes)
                self.scenes.append(agents)
                self.map_ids.append(windows[key])
                self.cities.append(city_idx)
                added += 1
        return added

    def _add_map(self, drivable, cx, cy, lanes=None) -> int:
        h = self.cfg.size / 2 + self.cfg.margin
        box = shapely.box(cx - h, cy - h, cx + h, cy + h)
        local = shapely.intersection(drivable, box)
        local = shapely.affinity.translate(local, -cx, -cy)
        self.maps.append(local)
        self.rasters.append(rasterize(local, self.cfg.size / 2, self.cfg.raster))
        fields = None
        if lanes is not None:
            near = lanes[shapely.intersects(lanes, box)]
            near = shapely.transform(near, lambda xy: xy - [cx, cy])
            fields = lane_fields(near, self.cfg.size / 2, self.cfg.raster)
        self.lane_fields.append(fields)
        return len(self.maps) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Padded ``x`` ``[S, N, 7]`` (physical units), ``mask``, ``map_id``, ``city``."""
        n = self.cfg.max_agents
        S = len(self.scenes)
        x = np.zeros((S, n, 7), np.float32)
        mask = np.zeros((S, n), bool)
        for s, agents in enumerate(self.scenes):
            k = len(agents)
            x[s, :k, 0:4] = agents[:, 0:4]
            x[s, :k, 4] = np.cos(agents[:, 4])
            x[s, :k, 5] = np.sin(agents[:, 4])
            x[s, :k, 6] = agents[:, 5]
            mask[s, :k] = True
        return {
            "x": x,
            "mask": mask,
            "map_id": np.asarray(self.map_ids, np.int64),
            "city": np.asarray(self.cities, np.int64),
        }
