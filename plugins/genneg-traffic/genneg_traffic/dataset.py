"""The traffic dataset: its on-disk format and the genneg ``Dataset``.

A dataset directory holds (bring your own data by writing these four files):

``meta.json``
    ``{"format": "genneg-traffic/1", "features": [...7 names...], "normalization": {"mean":
    [7], "std": [7]}, "window": 80.0, "raster": 64, "cities": [names], "test_city": name,
    "source": ..., "options": {...}, "n_scenes": S, "n_maps": M}``
``scenes.pt``
    ``x`` float32 ``[S, N, 7]`` in physical units (metres, radians as cos/sin, m/s; see
    :mod:`genneg_traffic.features`), ``mask`` bool ``[S, N]``, ``map_id`` int64 ``[S]``,
    ``city`` int64 ``[S]`` (index into ``cities``).
``maps.pt``
    the :class:`~genneg_traffic.maps.MapBank` (drivable area per map id, scene frame).
``rasters.pt``
    ``rasters`` uint8 ``[M, R, R]``: each map rasterised over the window (1 = drivable).
``lanes.pt`` (optional; the SUMO source writes it)
    ``fields`` float16 ``[M, 3, R, R]``: per map the lateral offset from the nearest lane centre
    line and the lane's direction of travel at every pixel centre
    (:func:`genneg_traffic.lanes.lane_fields`), ``channels`` their names.

Derived on first load and cached next to them (not part of the format): ``sdf.pt``, the signed
distance (metres, + inside) from every raster pixel centre to its map's road edge
(:func:`signed_distance`).

:meth:`TrafficDataset.load` splits the scenes of the held-out city off as ``test`` and the
others at random into ``train`` and ``val``; ``x`` is standardised with the stored statistics
and ``cond`` holds ``mask``, ``map_id``, ``map`` (uint8 ``[B, 1, R, R]``), ``map_frame``
(float ``[B, 4]``, model-unit positions -> raster coordinates; :func:`map_frame`),
``feature_frame`` (float ``[B, 14]``: the normalisation's mean and std, model units -> physical
units), ``sdf`` (float16 ``[B, 1, R, R]``, the signed distance to the road edge in metres) and,
where the dataset has ``lanes.pt``, ``lanes`` (float16 ``[B, 3, R, R]``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from genneg import Dataset, DataSplit, OracleResult, Splits
from genneg_traffic.features import FEATURES, Normalizer
from genneg_traffic.lanes import CHANNELS as LANE_CHANNELS
from genneg_traffic.maps import MapBank
from genneg_traffic.scenes import SceneCutter, WindowConfig

FORMAT = "genneg-traffic/1"
SOURCES = ("synthetic", "sumo", "dir")


def dataset_dir(root: str, name: str) -> Path:
    """Where dataset ``name`` lives under the data root: ``<root>/traffic/<name>``."""
    return Path(root).expanduser() / "traffic" / name


def build(
    out: Path,
    source: str,
    *,
    seed: int = 0,
    window: dict | None = None,
    source_options: dict | None = None,
    progress: bool = True,
    log=print,
) -> dict:
    """Simulate (or generate) cities, cut scenes and write a dataset directory; returns meta."""
    t0 = time.perf_counter()
    wcfg = WindowConfig(**(window or {}))
    opts = dict(source_options or {})
    if source == "synthetic":
        from genneg_traffic.synthetic import SyntheticConfig, synthetic_cities

        cities = synthetic_cities(SyntheticConfig(**opts), seed, progress)
        test_city = cities[-1].name
    elif source == "sumo":
        from genneg_traffic.sumo import SumoConfig, sumo_cities

        scfg = SumoConfig(**opts)
        cities = sumo_cities(scfg, seed, progress=progress, log=log)
        test_city = scfg.test_city
    else:
        raise ValueError(f"cannot build source {source!r}; choose from {SOURCES[:2]}")
    cutter = SceneCutter(wcfg)
    rng = np.random.default_rng([seed, 1])
    from tqdm.auto import tqdm

    for city in tqdm(cities, desc="cutting scenes", disable=not progress):
        n = cutter.add_city(city, rng)
        log(f"{city.name}: {n} scenes")
    arrays = cutter.arrays()
    names = cutter.city_names
    if test_city not in names:
        raise ValueError(f"test city {test_city!r} is not among the cities {names}")
    test_idx = names.index(test_city)
    not_test = arrays["city"] != test_idx
    if not not_test.any() or not_test.all():
        raise ValueError("need scenes both in and outside the test city")
    norm = Normalizer.fit(arrays["x"][not_test].astype(np.float64), arrays["mask"][not_test])
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".partial"
    tmp.mkdir(exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, tmp / "scenes.pt")
    MapBank(cutter.maps).save(tmp / "maps.pt")
    torch.save({"rasters": torch.from_numpy(np.stack(cutter.rasters))}, tmp / "rasters.pt")
    files = ["scenes.pt", "maps.pt", "rasters.pt"]
    if cutter.lane_fields and all(f is not None for f in cutter.lane_fields):
        fields = torch.from_numpy(np.stack(cutter.lane_fields)).to(torch.float16)
        torch.save({"fields": fields, "channels": list(LANE_CHANNELS)}, tmp / "lanes.pt")
        files.append("lanes.pt")
    meta = {
        "format": FORMAT,
        "features": list(FEATURES),
        "normalization": norm.to_dict(),
        "window": wcfg.size,
        "raster": wcfg.raster,
        "cities": names,
        "test_city": test_city,
        "source": source,
        "seed": seed,
        "options": opts,
        "window_options": _plain(wcfg),
        "n_scenes": int(len(arrays["x"])),
        "n_maps": len(cutter.maps),
        "build_seconds": round(time.perf_counter() - t0, 1),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    for f in (*files, "meta.json"):  # meta.json last: "done"
        os.replace(tmp / f, out / f)
    tmp.rmdir()
    log(
        f"wrote {meta['n_scenes']} scenes, {meta['n_maps']} maps to {out} "
        f"in {meta['build_seconds']} s"
    )
    return meta


def _plain(cfg) -> dict:
    import attrs

    return attrs.asdict(cfg)


class TrafficDataset(Dataset):
    """Scenes of a traffic dataset directory, built on first use if the source allows.

    :param name: directory under ``<data_root>/traffic/``.
    :param source: ``synthetic`` (procedural, seconds), ``sumo`` (needs ``genneg-traffic[sumo]``)
        or ``dir`` (an existing directory, e.g. from ``genneg traffic build-dataset`` or your
        own data in the documented format).
    :param seed: the build seed (the dataset is deterministic for it).
    :param val_fraction: share of the non-test scenes held out for validation.
    :param window, source_options: passed to the builder (:class:`WindowConfig`,
        :class:`~genneg_traffic.synthetic.SyntheticConfig` or
        :class:`~genneg_traffic.sumo.SumoConfig`).
    """

    def __init__(
        self,
        name: str = "synthetic",
        source: str = "synthetic",
        seed: int = 0,
        val_fraction: float = 0.1,
        window: dict | None = None,
        source_options: dict | None = None,
    ):
        if source not in SOURCES:
            raise ValueError(f"unknown traffic source {source!r}; choose from {SOURCES}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.name, self.source, self.seed = name, source, seed
        self.val_fraction = val_fraction
        self.window = dict(window or {})
        self.source_options = dict(source_options or {})
        self.meta: dict | None = None

    def path(self, root: str) -> Path:
        return dataset_dir(root, self.name)

    def ensure(self, root: str, progress: bool = True) -> Path:
        """The dataset directory, built if missing; a directory built with other options is an
        error (choose another ``name`` or delete it)."""
        out = self.path(root)
        meta_path = out / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"{out}: unknown format {meta.get('format')!r}")
            if self.source != "dir":
                want = {
                    "source": self.source,
                    "seed": self.seed,
                    "options": self.source_options,
                    "window_options": _plain(WindowConfig(**self.window)),
                }
                have = {k: meta.get(k) for k in want}
                if have != want:
                    raise ValueError(
                        f"{out} was built with {have}, not {want}: choose another "
                        "dataset name or delete that directory"
                    )
            return out
        if self.source == "dir":
            raise ValueError(
                f"no traffic dataset at {out}; build one with `genneg traffic "
                "build-dataset` or write the files described in genneg_traffic.dataset"
            )
        build(
            out,
            self.source,
            seed=self.seed,
            window=self.window,
            source_options=self.source_options,
            progress=progress,
        )
        return out

    def load(self, root: str, generator: torch.Generator) -> Splits:
        """Train / val (random split of the training cities) / test (the held-out city)."""
        out = self.ensure(root)
        self.meta = json.loads((out / "meta.json").read_text())
        self.normalizer = Normalizer.from_dict(self.meta["normalization"])
        scenes = torch.load(out / "scenes.pt", weights_only=True)
        rasters = torch.load(out / "rasters.pt", weights_only=True)["rasters"]
        self.maps = MapBank.load(out / "maps.pt")
        sdf = load_sdf(out, self.maps, self.meta["window"], rasters.shape[-1])
        lanes = None
        if (out / "lanes.pt").exists():
            lanes = torch.load(out / "lanes.pt", weights_only=True)["fields"]
        x = self.normalizer.normalize(scenes["x"].double()).float()
        x = torch.where(scenes["mask"][..., None], x, torch.zeros_like(x))
        full = DataSplit(
            x=x,
            cond={
                "mask": scenes["mask"],
                "map_id": scenes["map_id"],
                "map": rasters[scenes["map_id"]][:, None],
                "map_frame": map_frame(self.normalizer, self.meta["window"]).expand(len(x), 4),
                "feature_frame": feature_frame(self.normalizer).expand(len(x), 2 * len(FEATURES)),
                "sdf": sdf[scenes["map_id"]][:, None],
                **({} if lanes is None else {"lanes": lanes[scenes["map_id"]]}),
            },
        )
        test_idx = self.meta["cities"].index(self.meta["test_city"])
        is_test = scenes["city"] == test_idx
        rest = (~is_test).nonzero().squeeze(1)
        rest = rest[torch.randperm(len(rest), generator=generator)]
        n_val = max(1, int(round(self.val_fraction * len(rest))))
        return Splits(
            train=full.index(rest[n_val:].sort().values),
            val=full.index(rest[:n_val].sort().values),
            test=full.index(is_test.nonzero().squeeze(1)),
        )

    def plot_samples(self, split: DataSplit, result: OracleResult, path: str, title: str) -> None:
        """A grid of scenes with infracting vehicles highlighted (Fig. 1 style)."""
        from genneg_traffic.plots import plot_scenes

        plot_scenes(split, result, self.maps, self.normalizer, path, title)


def map_frame(normalizer: Normalizer, window: float) -> torch.Tensor:
    """``[1, 4]`` = ``(a_x, b_x, a_y, b_y)``: the affine map from model-unit positions to the
    raster's ``grid_sample`` coordinates, ``u = a_x x + b_x`` (-1 = left edge, +1 = right) and
    ``v = a_y y + b_y`` (-1 = top row = largest y). The raster spans ``[-window/2, window/2]^2``
    metres (:func:`genneg_traffic.maps.rasterize`)."""
    half = window / 2
    (mx, my), (sx, sy) = normalizer.mean[:2], normalizer.std[:2]
    return torch.tensor([[sx / half, mx / half, -sy / half, -my / half]], dtype=torch.float32)


def feature_frame(normalizer: Normalizer) -> torch.Tensor:
    """``[1, 14]`` = ``(mean[7], std[7])`` of the normalisation: physical = model * std + mean."""
    return torch.tensor([[*normalizer.mean, *normalizer.std]], dtype=torch.float32)


def signed_distance(geom, half: float, res: int) -> np.ndarray:
    """``[res, res]`` float32: the distance (metres) from each pixel centre of the raster grid of
    :func:`genneg_traffic.maps.rasterize` to the boundary of ``geom``, positive inside it."""
    import shapely

    step = 2 * half / res
    centres = -half + step * (np.arange(res) + 0.5)
    xs, ys = np.meshgrid(centres, centres[::-1])
    xs, ys = xs.ravel(), ys.ravel()
    # the polygonal part only: a GeometryCollection (an intersection may leave stray lines or
    # points) has no boundary, and lines have no area to drive on
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    area = shapely.union_all(parts) if parts else shapely.Polygon()
    if area.is_empty:
        return np.full((res, res), -2 * half, np.float32)
    shapely.prepare(area)
    d = shapely.distance(area.boundary, shapely.points(xs, ys))
    inside = shapely.contains_xy(area, xs, ys)
    return np.where(inside, d, -d).reshape(res, res).astype(np.float32)


def load_sdf(out: Path, maps: MapBank, window: float, res: int) -> torch.Tensor:
    """``[M, R, R]`` float16 signed distances of every map (:func:`signed_distance`), cached in
    ``<out>/sdf.pt`` (computed on first use, about 20 s for 1500 maps)."""
    path = out / "sdf.pt"
    if path.exists():
        sdf = torch.load(path, weights_only=True)["sdf"]
        if sdf.shape == (len(maps), res, res):
            return sdf
    sdf = np.stack([signed_distance(g, window / 2, res) for g in maps.geoms])
    sdf = torch.from_numpy(sdf).to(torch.float16)
    tmp = out / f".sdf.{os.getpid()}.pt"
    torch.save({"sdf": sdf}, tmp)
    os.replace(tmp, path)
    return sdf
