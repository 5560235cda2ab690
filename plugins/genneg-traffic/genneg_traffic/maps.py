"""Drivable-area geometry per map index, its storage and its rasterisation.

Every scene carries ``cond["map_id"]`` (int64 ``[B]``), an index into the dataset's
:class:`MapBank`: one (multi)polygon per scene window, in that scene's own frame (metres,
origin at the window centre), covering the window plus a margin so that vehicles straddling
the window's edge are judged correctly. The bank is stored next to the dataset as
``maps.pt``: the polygons' WKB bytes concatenated into one uint8 tensor with int64 offsets
(plain tensors, loadable with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import numpy as np
import shapely
import torch


class MapBank:
    """An indexable collection of drivable-area geometries (shapely 2)."""

    def __init__(self, geoms):
        geoms = np.asarray(list(geoms), dtype=object)
        bad = [i for i, g in enumerate(geoms) if not isinstance(g, shapely.Geometry)]
        if bad:
            raise ValueError(f"map(s) {bad[:5]} are not shapely geometries")
        self.geoms = geoms
        self._buffered: dict[float, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.geoms)

    def __getitem__(self, idx):
        return self.geoms[idx]

    def buffered(self, tol: float) -> np.ndarray:
        """Every map grown by ``tol`` metres and prepared for fast predicates (cached)."""
        if tol not in self._buffered:
            geoms = shapely.buffer(self.geoms, tol) if tol > 0 else self.geoms.copy()
            shapely.prepare(geoms)
            self._buffered[tol] = geoms
        return self._buffered[tol]

    # --- storage ---
    def to_tensors(self) -> dict[str, torch.Tensor]:
        wkb = shapely.to_wkb(self.geoms)
        lengths = np.array([len(b) for b in wkb], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        data = np.frombuffer(b"".join(wkb), dtype=np.uint8).copy()
        return {"wkb": torch.from_numpy(data), "offsets": torch.from_numpy(offsets)}

    @classmethod
    def from_tensors(cls, d: dict[str, torch.Tensor]) -> MapBank:
        data = d["wkb"].numpy().tobytes()
        off = d["offsets"].numpy()
        return cls(shapely.from_wkb([data[off[i] : off[i + 1]] for i in range(len(off) - 1)]))

    def save(self, path) -> None:
        torch.save(self.to_tensors(), path)

    @classmethod
    def load(cls, path) -> MapBank:
        return cls.from_tensors(torch.load(path, weights_only=True))


def rasterize(geom, half: float, res: int) -> np.ndarray:
    """``[res, res]`` uint8 image of ``geom`` over the square ``[-half, half]^2``: 1 where the
    pixel centre is drivable. Row 0 is the top (largest y), column 0 the left (smallest x)."""
    step = 2 * half / res
    centres = -half + step * (np.arange(res) + 0.5)
    xs, ys = np.meshgrid(centres, centres[::-1])
    shapely.prepare(geom)
    return shapely.contains_xy(geom, xs.ravel(), ys.ravel()).reshape(res, res).astype(np.uint8)
