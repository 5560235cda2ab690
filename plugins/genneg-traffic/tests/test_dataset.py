"""The synthetic source and the dataset format: determinism, splits, cond, data validity."""

import json

import torch
from genneg_traffic.dataset import TrafficDataset
from genneg_traffic.oracle import traffic_oracle

OPTS = dict(
    source="synthetic",
    window={"max_agents": 8, "raster": 32, "windows_per_snapshot": 4},
    source_options={"cities": 3, "snapshots": 6, "extent": 200.0},
)


def test_build_load_and_label(tmp_path):
    ds = TrafficDataset(name="tiny", **OPTS)
    splits = ds.load(str(tmp_path), torch.Generator().manual_seed(0))
    meta = json.loads((tmp_path / "traffic" / "tiny" / "meta.json").read_text())
    assert meta["test_city"] == "synthetic-2" and meta["n_scenes"] == sum(
        len(getattr(splits, s)) for s in ("train", "val", "test")
    )
    tr = splits.train
    assert tr.x.shape[1:] == (8, 7) and tr.cond["mask"].dtype == torch.bool
    assert tr.cond["map"].shape[1:] == (1, 32, 32) and tr.cond["map"].dtype == torch.uint8
    assert (tr.cond["mask"].sum(1) >= 2).all()
    assert (tr.x[~tr.cond["mask"]] == 0).all()  # padding is zero
    real = tr.x[tr.cond["mask"]]
    assert real.mean(0).abs().max() < 0.3 and (real.std(0) - 1).abs().max() < 0.3  # standardised
    oracle = traffic_oracle(str(tmp_path / "traffic" / "tiny"))
    for split in (splits.train, splits.test):
        res = oracle.label(split.x, split.cond)
        assert res.valid.float().mean() > 0.97  # the data is (almost) infraction-free
    # deterministic for a seed: a second build gives the same scenes
    again = TrafficDataset(name="tiny2", **OPTS).load(
        str(tmp_path), torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.train.x, splits.train.x)


def test_option_mismatch_is_an_error(tmp_path):
    TrafficDataset(name="tiny", **OPTS).ensure(str(tmp_path), progress=False)
    other = dict(OPTS, source_options={"cities": 4, "snapshots": 6, "extent": 200.0})
    try:
        TrafficDataset(name="tiny", **other).ensure(str(tmp_path))
    except ValueError as exc:
        assert "built with" in str(exc)
    else:
        raise AssertionError("a dataset built with other options was silently reused")


def test_signed_distance_to_the_road_edge():
    """Exact distances at pixel centres: + inside, - outside; stray lines of a
    GeometryCollection (what an intersection can leave) are no road and give no NaN."""
    import numpy as np
    import shapely
    from genneg_traffic.dataset import signed_distance

    road = shapely.box(-10.0, -2.0, 10.0, 2.0)  # a 4 m wide road along x
    stray = shapely.LineString([(-10, 8), (10, 8)])
    for geom in (road, shapely.GeometryCollection([road, stray])):
        sdf = signed_distance(geom, half=10.0, res=10)  # 2 m pixels, centres at -9, -7, ... 9
        assert np.isfinite(sdf).all()
        ys = 9.0 - 2.0 * np.arange(10)  # row 0 is the top
        want = np.minimum(2.0 - np.abs(ys), 1.0)  # inside: nearest edge is 1 m away (x = +-10)
        want = np.where(np.abs(ys) < 2, want, 2.0 - np.abs(ys))
        assert np.allclose(sdf[:, 0], want, atol=1e-6)
        assert np.allclose(sdf[:, 4], 2.0 - np.abs(ys), atol=1e-6)
    assert (signed_distance(shapely.Polygon(), 10.0, 4) == -20.0).all()


def test_lane_fields_offset_and_direction():
    """Two opposite lanes 4 m apart along x: the offset is signed to the left of travel and
    exact at pixel centres; the direction is the lane's; no lane gives -clip and (0, 0)."""
    import numpy as np
    import shapely
    from genneg_traffic.lanes import lane_fields

    east = shapely.LineString([(-30, -2), (30, -2)])  # travelling +x at y = -2
    west = shapely.LineString([(30, 2), (-30, 2)])  # travelling -x at y = +2
    f = lane_fields(np.array([east, west], dtype=object), half=10.0, res=10, clip=4.0)
    ys = 9.0 - 2.0 * np.arange(10)  # pixel-centre y per row: 9, 7, ..., -9
    col = f[:, :, 3]  # x = -3: far from the lines' ends
    below = ys < 0  # nearest lane: the eastbound one; left of +x is +y
    want_off = np.where(below, ys + 2, -(ys - 2))  # westbound: left of -x is -y
    assert np.allclose(col[0], np.clip(want_off, -4, 4), atol=1e-6)
    assert np.allclose(col[1], np.where(below, 1.0, -1.0)) and np.allclose(col[2], 0.0)
    empty = lane_fields(np.array([], dtype=object), half=10.0, res=4)
    assert np.allclose(empty[0], -4.0) and np.allclose(empty[1:], 0.0)
