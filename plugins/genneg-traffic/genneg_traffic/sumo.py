"""The SUMO data source: randomTrips + sumo on shipped real networks and netgenerate networks.

Needs the optional extra ``genneg-traffic[sumo]`` (the ``eclipse-sumo`` wheel, which ships
SUMO's binaries, ``tools/randomTrips.py``, ``sumolib`` and real OSM-derived networks).

For each network: trips from ``randomTrips.py`` (seeded, ``--insertion-density`` vehicles per
hour per km of lane), a vType distribution of passenger-class vehicles whose sizes come from
:func:`genneg_traffic.vehicles.sample_sizes`, then ``sumo`` writes floating-car data every
``snapshot_every`` seconds after ``warmup``. SUMO reports the *front bumper* and a
*navigational* angle (degrees, 0 = north, clockwise); :func:`fcd_to_vehicles` converts to
centres and radians. The drivable area is the union of all lanes that allow passenger cars
(each lane's centre line buffered by half its width, flat caps) and all junction polygons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import attrs
import numpy as np
import shapely

from genneg_traffic.features import front_to_centre, navigational_to_math
from genneg_traffic.scenes import City
from genneg_traffic.vehicles import sample_sizes

#: Real networks shipped in the eclipse-sumo wheel (paths under SUMO_HOME).
SHIPPED = {
    "berlin": "tools/game/DRT/osm.net.xml",
    "a10kw": "tools/game/A10KW/osm.net.xml",
    "braunschweig": "tools/game/bs3d/bs.net.xml",
    "ingolstadt": "tools/game/fkk_in/ingolstadt.net.xml.gz",
    "highway": "tools/game/highway/highway.net.xml",
}
#: Seeded netgenerate networks: name -> netgenerate arguments.
GENERATED = {
    "grid": ["--grid", "--grid.number", "5", "--grid.length", "110", "--default.lanenumber", "2"],
    "spider": [
        "--spider",
        "--spider.arm-number",
        "7",
        "--spider.circle-number",
        "4",
        "--spider.space-radius",
        "70",
        "--default.lanenumber",
        "2",
    ],
    "rand": [
        "--rand",
        "--rand.iterations",
        "120",
        "--rand.min-distance",
        "60",
        "--default.lanenumber",
        "2",
    ],
}


class SumoNotInstalled(RuntimeError):
    """The SUMO source needs ``pip install genneg-traffic[sumo]``."""


@attrs.frozen(kw_only=True)
class SumoConfig:
    """Which networks, and how long and how densely to simulate each."""

    networks: tuple = attrs.field(
        default=("berlin", "a10kw", "braunschweig", "ingolstadt", "grid", "spider", "rand"),
        converter=tuple,
    )
    test_city: str = "braunschweig"
    sim_seconds: int = 900
    warmup: int = 200
    snapshot_every: int = 10
    insertion_density: float = 80.0
    vtypes: int = 24
    workers: int = 2


def sumo_home() -> Path:
    try:
        import sumo
    except ImportError:
        raise SumoNotInstalled(
            "the SUMO data source needs eclipse-sumo: pip install 'genneg-traffic[sumo]'"
        ) from None
    return Path(sumo.SUMO_HOME)


def _env(home: Path) -> dict:
    env = dict(os.environ, SUMO_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join([str(home / "tools"), env.get("PYTHONPATH", "")])
    return env


def _run(cmd, home, cwd):
    res = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_env(home), capture_output=True, text=True
    )
    if res.returncode:
        raise RuntimeError(
            f"{Path(str(cmd[0])).name} failed ({res.returncode}): "
            f"{(res.stderr or res.stdout)[-1500:]}"
        )
    return res


def vtype_file(path: Path, n: int, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Write a ``vTypeDistribution`` of ``n`` passenger vTypes with sampled sizes; returns
    type id -> (length, width)."""
    length, width = sample_sizes(rng, n)
    root = ET.Element("additional")
    dist = ET.SubElement(root, "vTypeDistribution", id="mix")
    sizes = {}
    for i in range(n):
        tid = f"v{i}"
        sizes[tid] = (round(float(length[i]), 2), round(float(width[i]), 2))
        ET.SubElement(
            dist,
            "vType",
            id=tid,
            vClass="passenger",
            length=str(sizes[tid][0]),
            width=str(sizes[tid][1]),
            minGap="2.0",
            sigma="0.5",
            probability="1",
        )
    ET.ElementTree(root).write(path)
    return sizes


def fcd_to_vehicles(fcd_path, sizes: dict, warmup: float) -> list[np.ndarray]:
    """Snapshots ``[M, 6]`` (centre x, centre y, length, width, heading rad, speed) from an FCD
    file; SUMO's front-bumper positions and navigational degrees are converted."""
    snaps = []
    for _, el in ET.iterparse(fcd_path, events=("end",)):
        if el.tag != "timestep":
            continue
        if float(el.get("time")) >= warmup:
            rows = []
            for v in el.iter("vehicle"):
                length, width = sizes.get(v.get("type"), (np.nan, np.nan))
                heading = float(navigational_to_math(float(v.get("angle"))))
                cx, cy = front_to_centre(float(v.get("x")), float(v.get("y")), length, heading)
                rows.append((float(cx), float(cy), length, width, heading, float(v.get("speed"))))
            arr = np.array(rows, dtype=np.float64).reshape(-1, 6)
            snaps.append(arr[np.isfinite(arr).all(axis=1)])
        el.clear()
    return snaps


def drivable_area(net_path) -> shapely.Geometry:
    """Union of passenger-car lanes (buffered centre lines) and junction polygons."""
    return road_geometry(net_path)[0]


def road_geometry(net_path) -> tuple[shapely.Geometry, np.ndarray]:
    """:func:`drivable_area` and the passenger lanes' centre lines (LineStrings in the
    direction of travel, internal junction lanes included)."""
    tools = str(sumo_home() / "tools")
    if tools not in sys.path:
        sys.path.append(tools)
    import sumolib

    net = sumolib.net.readNet(str(net_path), withInternal=True)
    parts, lines = [], []
    for edge in net.getEdges(withInternal=True):
        for lane in edge.getLanes():
            if not lane.allows("passenger"):
                continue
            shape = lane.getShape()
            if len(shape) >= 2:
                line = shapely.LineString(shape)
                lines.append(line)
                parts.append(line.buffer(lane.getWidth() / 2, cap_style="flat"))
    for node in net.getNodes():
        shape = node.getShape()
        if len(shape) >= 3:
            poly = shapely.Polygon(shape)
            parts.append(poly if poly.is_valid else poly.buffer(0))
    return shapely.union_all(parts), np.asarray(lines, dtype=object)


def simulate(name: str, work: Path, cfg: SumoConfig, seed: int) -> City:
    """Build (if generated) and simulate one network; returns its city."""
    home = sumo_home()
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    if name in SHIPPED:
        net = home / SHIPPED[name]
    elif name in GENERATED:
        net = work / f"{name}.net.xml"
        _run(
            [home / "bin" / "netgenerate", *GENERATED[name], "--seed", seed, "-o", net], home, work
        )
    else:
        raise ValueError(
            f"unknown SUMO network {name!r}; shipped: {sorted(SHIPPED)}, "
            f"generated: {sorted(GENERATED)}"
        )
    sizes = vtype_file(work / "vtypes.add.xml", cfg.vtypes, rng)
    _run(
        [
            sys.executable,
            home / "tools" / "randomTrips.py",
            "-n",
            net,
            "-o",
            work / "trips.xml",
            "--seed",
            seed,
            "-e",
            cfg.sim_seconds,
            "--insertion-density",
            cfg.insertion_density,
            "--fringe-factor",
            "5",
            "--trip-attributes",
            'type="mix"',
        ],
        home,
        work,
    )
    _run(
        [
            home / "bin" / "sumo",
            "-n",
            net,
            "-a",
            work / "vtypes.add.xml",
            "-r",
            work / "trips.xml",
            "--begin",
            0,
            "--end",
            cfg.sim_seconds,
            "--seed",
            seed,
            "--no-step-log",
            "--no-warnings",
            "--ignore-route-errors",
            "--time-to-teleport",
            "-1",
            "--collision.action",
            "remove",
            "--device.fcd.period",
            cfg.snapshot_every,
            "--fcd-output",
            work / "fcd.xml",
        ],
        home,
        work,
    )
    snaps = fcd_to_vehicles(work / "fcd.xml", sizes, cfg.warmup)
    drivable, lanes = road_geometry(net)
    return City(name=name, drivable=drivable, snapshots=snaps, lanes=lanes)


def sumo_cities(
    cfg: SumoConfig, seed: int, progress: bool = True, log=print, workdir: str | None = None
) -> list[City]:
    """Simulate every network of ``cfg`` (``cfg.workers`` in parallel), deterministic for
    ``seed``."""
    sumo_home()
    if cfg.test_city not in cfg.networks:
        raise ValueError(f"test city {cfg.test_city!r} is not among networks {cfg.networks}")
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        with ThreadPoolExecutor(max_workers=cfg.workers) as pool:
            futures = {n: pool.submit(simulate, n, Path(tmp) / n, cfg, seed) for n in cfg.networks}
            cities = []
            for name in tqdm(cfg.networks, desc="SUMO networks", disable=not progress):
                city = futures[name].result()
                log(
                    f"{name}: {len(city.snapshots)} snapshots, "
                    f"{sum(len(s) for s in city.snapshots)} vehicle states"
                )
                cities.append(city)
    return cities
