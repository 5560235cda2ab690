"""The SUMO converter: a hand-written FCD file, and a tiny real SUMO run (needs eclipse-sumo)."""

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import shapely
import torch
from genneg_traffic.maps import MapBank
from genneg_traffic.oracle import TrafficOracle
from genneg_traffic.scenes import SceneCutter, WindowConfig
from genneg_traffic.sumo import SumoConfig, fcd_to_vehicles

FCD = """<fcd-export>
  <timestep time="0.00"><vehicle id="a" x="0" y="0" angle="90" type="v0" speed="1"/></timestep>
  <timestep time="10.00">
    <vehicle id="a" x="10.0" y="5.0" angle="90.00" type="v0" speed="3.5"/>
    <vehicle id="b" x="0.0" y="0.0" angle="0.00" type="v1" speed="0"/>
    <vehicle id="c" x="1.0" y="1.0" angle="225.00" type="v1" speed="2"/>
  </timestep>
</fcd-export>"""


def test_fcd_front_bumper_to_centre(tmp_path):
    path = tmp_path / "fcd.xml"
    path.write_text(FCD)
    snaps = fcd_to_vehicles(path, {"v0": (4.0, 1.8), "v1": (6.0, 2.0)}, warmup=5)
    assert len(snaps) == 1  # the warm-up step is dropped
    a, b, c = snaps[0]
    # east-bound (90 deg): centre 2 m west of the front bumper, heading 0 rad
    assert a == pytest.approx([8.0, 5.0, 4.0, 1.8, 0.0, 3.5], abs=1e-9)
    # north-bound (0 deg): centre 3 m south, heading pi/2
    assert b == pytest.approx([0.0, -3.0, 6.0, 2.0, math.pi / 2, 0.0], abs=1e-9)
    # south-west-bound (225 deg): heading -3pi/4, centre 3 m to the north-east of the front
    r = 3 / math.sqrt(2)
    assert c[:2] == pytest.approx([1 + r, 1 + r], abs=1e-9)
    assert math.cos(c[4]) == pytest.approx(-math.sqrt(0.5)) and math.sin(c[4]) == pytest.approx(
        -math.sqrt(0.5)
    )


@pytest.mark.sumo
def test_tiny_sumo_run(tmp_path):
    pytest.importorskip("sumo")
    import sys

    from genneg_traffic.sumo import simulate, sumo_home

    sys.path.append(str(sumo_home() / "tools"))
    import sumolib

    cfg = SumoConfig(
        networks=("grid",),
        test_city="grid",
        sim_seconds=150,
        warmup=60,
        snapshot_every=10,
        insertion_density=60,
    )
    city = simulate("grid", tmp_path / "grid", cfg, seed=3)
    assert len(city.snapshots) == 9 and sum(len(s) for s in city.snapshots) > 50
    # front bumper -> centre: the centre sits half a length back along the lane (SUMO's `pos`
    # is the front's lane offset); check every vehicle on a straight stretch of a normal lane
    net = sumolib.net.readNet(str(tmp_path / "grid" / "grid.net.xml"), withInternal=True)
    types = {
        v.get("id"): (float(v.get("length")), float(v.get("width")))
        for v in ET.parse(tmp_path / "grid" / "vtypes.add.xml").iter("vType")
    }
    checked = 0
    last = list(ET.parse(tmp_path / "grid" / "fcd.xml").iter("timestep"))[-1]
    centres = {tuple(np.round(row[:2], 6)) for row in city.snapshots[-1]}
    for v in last.iter("vehicle"):
        lane = net.getLane(v.get("lane"))
        length = types[v.get("type")][0]
        pos = float(v.get("pos"))
        if lane.getID().startswith(":") or pos < length or len(lane.getShape()) != 2:
            continue
        want = sumolib.geomhelper.positionAtShapeOffset(lane.getShape(), pos - length / 2)
        got = min(centres, key=lambda c: math.dist(c, want))
        assert math.dist(got, want) < 0.05
        # the city's lane centre lines pass through the centre (SUMO drives on them)
        assert shapely.distance(city.lanes, shapely.Point(got)).min() < 0.05
        checked += 1
    assert checked >= 5
    # simulated traffic is (almost) free of infractions under the oracle
    cutter = SceneCutter(WindowConfig(max_agents=16, raster=32))
    cutter.add_city(city, np.random.default_rng(0))
    arr = cutter.arrays()
    res = TrafficOracle(MapBank(cutter.maps)).label(
        torch.from_numpy(arr["x"]),
        {"mask": torch.from_numpy(arr["mask"]), "map_id": torch.from_numpy(arr["map_id"])},
    )
    assert len(arr["x"]) > 10
    assert res.categories["offroad"].float().mean() < 0.02
    assert res.categories["collision"].float().mean() < 0.05
