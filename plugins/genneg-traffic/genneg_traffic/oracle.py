"""The traffic oracle: collision and offroad infractions, by scene and by agent (Sec. 4.2).

Definitions (all in metres, after undoing the feature normalisation):

* **collision**: two vehicle rectangles whose *interiors* overlap, measured as an intersection
  area larger than ``collision_area_tol`` (default 1e-3 m^2, i.e. 10 cm^2). Rectangles that
  only touch (a shared edge or corner, intersection area 0 up to rounding) do not collide; a
  rectangle inside another does. Both vehicles of a colliding pair are flagged.
* **offroad**: a rectangle that is not covered by the scene's drivable area grown by
  ``offroad_tol`` metres (default 0.2 m): a vehicle is offroad when some part of it lies more
  than ``offroad_tol`` outside the road. The tolerance absorbs the lateral wiggle of simulated
  lane changes and the polygonal approximation of curved lanes.
* **degenerate**: a vehicle whose length or width is below ``min_size`` metres (default 0.1,
  which includes zero and negative sizes a model may produce) or whose ``(cos, sin)`` has norm
  below ``1e-6`` (no heading). Such a vehicle is an infraction of its own category and is left
  out of the collision and offroad tests, so bad geometry never reaches shapely.
* Non-finite features (NaN, inf) of real agents raise ``ValueError`` naming the scenes: they
  are a bug upstream (genneg's engine excludes them before labelling).

A scene is valid iff every real agent is valid; ``element_valid`` gives the by-agent labels
(padded agents are True), ``categories`` the per-scene flags.

The oracle is vectorised: one numpy pass builds all rectangles, a bounding-circle test over
all ``[B, N, N]`` pairs finds collision candidates, and shapely 2 computes the candidates'
intersection areas and the ``covers`` tests against prepared, buffered map polygons in single
array calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
import torch

from genneg import Oracle, OracleResult
from genneg_traffic.features import N_FEATURES, Normalizer
from genneg_traffic.geometry import rectangles
from genneg_traffic.maps import MapBank

CATEGORIES = ("collision", "offroad", "degenerate")


class TrafficOracle(Oracle):
    """Collision / offroad oracle over a :class:`MapBank`.

    :param maps: the drivable areas, indexed by ``cond["map_id"]``.
    :param normalizer: maps model features back to metres (identity if ``None``).
    :param offroad_tol: metres a vehicle may stick out of the drivable area.
    :param collision_area_tol: overlap area (m^2) above which two vehicles collide.
    :param min_size: smallest length or width (m) of a well-formed vehicle.
    :param check_offroad: also test the drivable area (switch off for collision-only studies).
    :param check_collision: also test overlaps between vehicles (switch off for offroad-only
        studies: a classifier trained on one category's labels, guidance by category).
    """

    categories = CATEGORIES

    def __init__(
        self,
        maps: MapBank,
        normalizer: Normalizer | None = None,
        *,
        offroad_tol: float = 0.2,
        collision_area_tol: float = 1e-3,
        min_size: float = 0.1,
        check_offroad: bool = True,
        check_collision: bool = True,
    ):
        if not (check_offroad or check_collision):
            raise ValueError("the traffic oracle needs check_offroad or check_collision (or both)")
        if offroad_tol < 0 or collision_area_tol < 0 or min_size < 0:
            raise ValueError("offroad_tol, collision_area_tol and min_size must be >= 0")
        self.maps = maps
        self.normalizer = normalizer or Normalizer(np.zeros(N_FEATURES), np.ones(N_FEATURES))
        self.offroad_tol = float(offroad_tol)
        self.collision_area_tol = float(collision_area_tol)
        self.min_size = float(min_size)
        self.check_offroad = check_offroad
        self.check_collision = check_collision

    @classmethod
    def from_dataset_dir(cls, dataset_dir: str, **options) -> TrafficOracle:
        """The oracle of a dataset directory (``meta.json`` + ``maps.pt``, see
        :mod:`genneg_traffic.dataset`)."""
        root = Path(dataset_dir).expanduser()
        meta_path, maps_path = root / "meta.json", root / "maps.pt"
        if not meta_path.exists() or not maps_path.exists():
            raise ValueError(
                f"{root} is not a traffic dataset directory (needs meta.json and maps.pt); "
                "build it with `genneg traffic build-dataset` or by loading the dataset first"
            )
        meta = json.loads(meta_path.read_text())
        return cls(MapBank.load(maps_path), Normalizer.from_dict(meta["normalization"]), **options)

    # ------------------------------------------------------------------ labelling
    def label(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> OracleResult:
        """Label scenes ``x`` ``[B, N, 7]`` (model units) with ``cond["map_id"]`` ``[B]`` and
        ``cond["mask"]`` ``[B, N]``."""
        flags = self.label_agents(x, cond)
        element_bad = flags["collision"] | flags["offroad"] | flags["degenerate"]
        cats = {k: torch.from_numpy(v.any(axis=1)) for k, v in flags.items()}
        return OracleResult(
            valid=torch.from_numpy(~element_bad.any(axis=1)),
            categories=cats,
            element_valid=torch.from_numpy(~element_bad),
        )

    def label_agents(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Per-agent infraction flags (bool ``[B, N]`` numpy arrays) by category."""
        if x.ndim != 3 or x.shape[-1] != N_FEATURES:
            raise ValueError(f"traffic scenes are [B, N, {N_FEATURES}], got {tuple(x.shape)}")
        B, N, _ = x.shape
        mask = cond.get("mask")
        mask = np.ones((B, N), bool) if mask is None else mask.detach().cpu().numpy().astype(bool)
        if mask.shape != (B, N):
            raise ValueError(f"cond['mask'] has shape {mask.shape}, expected {(B, N)}")
        v = self.normalizer.denormalize(x.detach().cpu().double().numpy())
        bad_rows = ~np.isfinite(v).all(axis=2) & mask
        if bad_rows.any():
            scenes = np.nonzero(bad_rows.any(axis=1))[0]
            raise ValueError(
                f"non-finite vehicle features in scene(s) {scenes[:10].tolist()} "
                f"({len(scenes)} in all); drop them before labelling"
            )
        out = {c: np.zeros((B, N), bool) for c in CATEGORIES}
        bi, ai = np.nonzero(mask)
        if len(bi) == 0:
            return out
        a = v[bi, ai]
        cx, cy, length, width, cos, sin = (a[:, k] for k in range(6))
        degenerate = (
            (length < self.min_size) | (width < self.min_size) | (np.hypot(cos, sin) < 1e-6)
        )
        out["degenerate"][bi, ai] = degenerate
        ok = ~degenerate
        bi, ai, cx, cy, length, width = bi[ok], ai[ok], cx[ok], cy[ok], length[ok], width[ok]
        heading = np.arctan2(sin[ok], cos[ok])
        rects = rectangles(cx, cy, length, width, heading)
        if self.check_collision:
            out["collision"][:] = self._collisions(B, N, bi, ai, cx, cy, length, width, rects)
        if self.check_offroad and len(rects):
            out["offroad"][bi, ai] = self._offroad(cond, B, bi, rects)
        return out

    def _collisions(self, B, N, bi, ai, cx, cy, length, width, rects) -> np.ndarray:
        """Flags ``[B, N]``: candidate pairs by bounding circles over all ``[B, N, N]`` pairs,
        then exact intersection areas of the candidates in one shapely call."""
        flags = np.zeros((B, N), bool)
        if len(rects) < 2:
            return flags
        idx = np.full((B, N), -1)
        idx[bi, ai] = np.arange(len(bi))
        radius = np.full((B, N), np.nan)
        px, py = np.full((B, N), np.nan), np.full((B, N), np.nan)
        radius[bi, ai] = 0.5 * np.hypot(length, width)
        px[bi, ai], py[bi, ai] = cx, cy
        dist = np.hypot(px[:, :, None] - px[:, None, :], py[:, :, None] - py[:, None, :])
        near = dist < radius[:, :, None] + radius[:, None, :]  # NaN (absent) compares False
        near &= np.triu(np.ones((N, N), bool), k=1)[None]
        sb, si, sj = np.nonzero(near)
        if len(sb) == 0:
            return flags
        i, j = idx[sb, si], idx[sb, sj]
        area = shapely.area(shapely.intersection(rects[i], rects[j]))
        hit = area > self.collision_area_tol
        flags[sb[hit], si[hit]] = True
        flags[sb[hit], sj[hit]] = True
        return flags

    def _offroad(self, cond, B, bi, rects) -> np.ndarray:
        map_id = cond.get("map_id")
        if map_id is None:
            raise ValueError("the traffic oracle needs cond['map_id'] (an index into its maps)")
        map_id = map_id.detach().cpu().numpy().astype(np.int64).reshape(-1)
        if map_id.shape != (B,):
            raise ValueError(f"cond['map_id'] has shape {map_id.shape}, expected ({B},)")
        if map_id.min() < 0 or map_id.max() >= len(self.maps):
            raise ValueError(
                f"cond['map_id'] out of range [0, {len(self.maps)}): "
                f"min {map_id.min()}, max {map_id.max()}"
            )
        roads = self.maps.buffered(self.offroad_tol)[map_id[bi]]
        return ~shapely.covers(roads, rects)


def traffic_oracle(
    dataset_dir: str,
    offroad_tol: float = 0.2,
    collision_area_tol: float = 1e-3,
    min_size: float = 0.1,
    check_offroad: bool = True,
    check_collision: bool = True,
) -> TrafficOracle:
    """Factory registered as oracle ``traffic``: the oracle of the dataset stored at
    ``dataset_dir`` (its maps and normalisation; see :mod:`genneg_traffic.dataset`)."""
    return TrafficOracle.from_dataset_dir(
        dataset_dir,
        offroad_tol=offroad_tol,
        collision_area_tol=collision_area_tol,
        min_size=min_size,
        check_offroad=check_offroad,
        check_collision=check_collision,
    )
