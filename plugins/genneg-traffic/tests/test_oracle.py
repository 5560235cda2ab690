"""The oracle on hand-built scenes: touching, overlapping, rotated, contained, off the road."""

import math

import numpy as np
import pytest
import shapely
import torch
from genneg_traffic.features import Normalizer, front_to_centre, navigational_to_math
from genneg_traffic.maps import MapBank
from genneg_traffic.oracle import CATEGORIES, TrafficOracle

from genneg.components import validate_oracle_result

ROAD = shapely.box(-40, -5, 40, 5)  # a 10 m wide straight road along x
OPEN = shapely.box(-60, -60, 60, 60)  # everything drivable


def car(x, y, length=4.0, width=2.0, heading=0.0, speed=0.0):
    return [x, y, length, width, math.cos(heading), math.sin(heading), speed]


def scenes(*rows, n=4):
    """Pad scenes (lists of cars) to n agents; returns x [B, n, 7] and mask [B, n]."""
    x = torch.zeros(len(rows), n, 7, dtype=torch.float64)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for b, cars in enumerate(rows):
        for a, c in enumerate(cars):
            x[b, a] = torch.tensor(c)
            mask[b, a] = True
    return x, mask


@pytest.fixture
def oracle():
    return TrafficOracle(MapBank([OPEN, ROAD]))


def run(oracle, rows, map_id=0):
    x, mask = scenes(*rows)
    cond = {"mask": mask, "map_id": torch.full((len(rows),), map_id)}
    result = oracle.label(x, cond)
    validate_oracle_result(result, len(rows), CATEGORIES, "traffic")
    return result


def test_touching_is_not_collision(oracle):
    r = run(
        oracle,
        [
            [car(0, 0), car(4, 0)],  # shared edge x = 2
            [car(0, 0), car(4, 2)],  # shared corner
            [car(0, 0), car(3, 0, heading=math.pi / 2)],
        ],
    )  # rotated, shared edge
    assert not r.categories["collision"].any()
    assert r.valid.all()


def test_overlap_is_collision(oracle):
    r = run(oracle, [[car(0, 0), car(3, 0)], [car(0, 0), car(3.99, 0)]])
    assert r.categories["collision"].all()
    assert r.element_valid[:, :2].logical_not().all()
    assert r.element_valid[:, 2:].all()  # padding is valid


def test_rotated(oracle):
    q = math.pi / 4
    # 45 deg car centred 2.5 m away: its corner reaches x = 2.5 - 2.12 < 2 -> overlap
    # at 4.2 m its nearest corner is at x = 2.08 > 2: bounding circles overlap, rectangles not
    r = run(oracle, [[car(0, 0), car(2.5, 0, heading=q)], [car(0, 0), car(4.2, 0, heading=q)]])
    assert r.categories["collision"].tolist() == [True, False]


def test_contained_is_collision(oracle):
    r = run(oracle, [[car(0, 0, 6, 2.5), car(0.5, 0, 1.0, 0.5)]])
    assert r.categories["collision"].tolist() == [True]
    assert r.element_valid[0, :2].tolist() == [False, False]


def test_only_the_colliding_pair_is_flagged(oracle):
    r = run(oracle, [[car(0, 0), car(3, 0), car(20, 0), car(-20, 3)]])
    assert r.element_valid[0].tolist() == [False, False, True, True]


def test_offroad_half_off_and_tolerance(oracle):
    r = run(oracle, [[car(0, 5)], [car(0, 4.1)], [car(0, 4.5)], [car(0, 0, heading=1.0)]], map_id=1)
    # half off; 0.1 m out (< 0.2 m tolerance); 0.5 m out; rotated 57 deg: corners reach
    # |y| = 2 sin(1) + 1 cos(1) = 2.22 < 5 -> on road
    assert r.categories["offroad"].tolist() == [True, False, True, False]
    assert not r.categories["collision"].any()
    strict = TrafficOracle(MapBank([OPEN, ROAD]), offroad_tol=0.0)
    x, mask = scenes([car(0, 4.1)])
    assert strict.label(x, {"mask": mask, "map_id": torch.tensor([1])}).valid.tolist() == [False]


def test_one_category_alone():
    """check_collision / check_offroad switch one test off: an overlapping pair half off the
    road is offroad only, or colliding only; switching both off is an error."""
    x, mask = scenes([car(0, 5), car(3, 5)])
    cond = {"mask": mask, "map_id": torch.tensor([1])}
    both = TrafficOracle(MapBank([OPEN, ROAD])).label(x, cond)
    assert both.categories["collision"].item() and both.categories["offroad"].item()
    off = TrafficOracle(MapBank([OPEN, ROAD]), check_collision=False).label(x, cond)
    assert not off.categories["collision"].item() and off.categories["offroad"].item()
    assert off.element_valid[0, :2].tolist() == [False, False]
    col = TrafficOracle(MapBank([OPEN, ROAD]), check_offroad=False).label(x, cond)
    assert col.categories["collision"].item() and not col.categories["offroad"].item()
    with pytest.raises(ValueError, match="check_offroad or check_collision"):
        TrafficOracle(MapBank([OPEN, ROAD]), check_offroad=False, check_collision=False)


def test_padding_is_ignored(oracle):
    x, mask = scenes([car(0, 0), car(10, 0)])
    x[0, 2] = torch.tensor(car(0, 0))  # a padded agent on top of agent 0
    x[0, 3] = float("nan")  # padded rows may hold anything
    r = oracle.label(x, {"mask": mask, "map_id": torch.tensor([0])})
    assert r.valid.tolist() == [True]


def test_degenerate_is_labelled_not_crashing(oracle):
    r = run(
        oracle,
        [[car(0, 0, width=-1.0), car(0, 0)], [car(0, 0, length=0.0)], [[0, 0, 4, 2, 0.0, 0.0, 0]]],
    )
    assert r.categories["degenerate"].all()
    assert not r.categories["collision"].any()  # degenerate agents are left out of collision
    assert r.element_valid[0].tolist()[:2] == [False, True]


def test_bad_input_raises_clear_errors(oracle):
    x, mask = scenes([car(0, 0), car(5, 0)])
    x[0, 1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        oracle.label(x, {"mask": mask, "map_id": torch.tensor([0])})
    x, mask = scenes([car(0, 0)])
    with pytest.raises(ValueError, match="out of range"):
        oracle.label(x, {"mask": mask, "map_id": torch.tensor([7])})
    with pytest.raises(ValueError, match="map_id"):
        oracle.label(x, {"mask": mask})
    with pytest.raises(ValueError, match=r"\[B, N, 7\]"):
        oracle.label(x[..., :5], {"mask": mask, "map_id": torch.tensor([0])})


def test_normalised_inputs_give_the_same_labels():
    norm = Normalizer([1, -2, 4.5, 1.8, 0, 0, 8], [20, 15, 1.5, 0.3, 0.7, 0.7, 5])
    plain = TrafficOracle(MapBank([ROAD]))
    scaled = TrafficOracle(MapBank([ROAD]), norm)
    x, mask = scenes([car(0, 0), car(3, 0)], [car(0, 4.5)], [car(0, 0), car(4, 0)])
    cond = {"mask": mask, "map_id": torch.zeros(3, dtype=torch.long)}
    a = plain.label(x, cond)
    b = scaled.label(norm.normalize(x).float(), cond)
    assert torch.equal(a.element_valid, b.element_valid)
    assert a.valid.tolist() == [False, False, True]


def test_sumo_conventions():
    # navigational degrees: 0 = north, 90 = east, clockwise
    theta = navigational_to_math([0, 90, 180, 270, 45])
    assert np.cos(theta) == pytest.approx([0, 1, 0, -1, math.sqrt(0.5)], abs=1e-12)
    assert np.sin(theta) == pytest.approx([1, 0, -1, 0, math.sqrt(0.5)], abs=1e-12)
    # a 4 m car heading east with its front bumper at (10, 0) is centred at (8, 0)
    cx, cy = front_to_centre(10.0, 0.0, 4.0, navigational_to_math(90.0))
    assert (float(cx), float(cy)) == pytest.approx((8.0, 0.0), abs=1e-12)
    cx, cy = front_to_centre(0.0, 0.0, 5.0, navigational_to_math(0.0))  # heading north
    assert (float(cx), float(cy)) == pytest.approx((0.0, -2.5), abs=1e-12)


def test_map_bank_roundtrip(tmp_path):
    bank = MapBank([ROAD, OPEN.difference(shapely.box(-1, -1, 1, 1))])
    bank.save(tmp_path / "maps.pt")
    again = MapBank.load(tmp_path / "maps.pt")
    assert len(again) == 2
    assert all(shapely.equals(bank[i], again[i]) for i in range(2))
    assert np.isclose(shapely.area(again[1]), 120 * 120 - 4)
