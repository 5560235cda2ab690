"""features <-> joints on hand-built motions, and the converter's round trip."""

import math

import pytest
import torch
from genneg_motion import gait
from genneg_motion import skeleton as sk
from genneg_motion.features import (
    facing_angle,
    feature_stats,
    joint_heights,
    joints_to_features,
    normalise_motion,
    recover_from_ric,
)


def test_layout_is_263():
    sizes = [s.stop - s.start for s in sk.FEATURE_GROUPS]
    assert sizes == [1, 2, 1, 63, 126, 66, 4] and sum(sizes) == sk.FEATURE_DIM


def test_straight_walk(rest_joints, hand_built):
    """Root velocity (0, v/fps) in the facing frame and no rotation: the body glides along +z
    at v m/s keeping its pose."""
    T, v = 40, 1.2
    f = hand_built(T, speed=v)
    joints = recover_from_ric(f)
    t = torch.arange(T, dtype=torch.float64)
    assert torch.allclose(joints[:, 0, 2], v * t / sk.FPS, atol=1e-9)
    assert torch.allclose(joints[:, 0, 0], torch.zeros(T, dtype=torch.float64), atol=1e-9)
    expected = (
        rest_joints[None]
        + torch.stack([torch.zeros(T), torch.zeros(T), v * t / sk.FPS], -1).double()[:, None]
    )
    assert torch.allclose(joints, expected, atol=1e-9)
    assert torch.allclose(facing_angle(joints), torch.zeros(T, dtype=torch.float64), atol=1e-9)


def test_root_turn_walks_a_circle(hand_built):
    """Constant yaw rate w and speed v: the root runs on a circle of radius ~v/w, and the
    body's facing turns by w per second (the feature stores half the per-frame increment)."""
    T, v, w = 120, 1.0, 0.8  # m/s, rad/s
    f = hand_built(T, speed=v, turn=w)
    joints = recover_from_ric(f)
    root = joints[:, 0, [0, 2]]
    # heading turns by w/fps per frame; phi > 0 turns the forward direction towards -x (right)
    phi = facing_angle(joints)
    step = torch.remainder(phi[1:] - phi[:-1] + math.pi, 2 * math.pi) - math.pi
    assert torch.allclose(step, torch.full_like(step, w / sk.FPS), atol=1e-9)
    assert joints[T // 4, 0, 0] < -0.5  # turned right (towards -x)
    # all root points on one circle: chord step of angle d has radius s / (2 sin(d/2))
    radius = (v / sk.FPS) / (2 * math.sin(w / sk.FPS / 2))
    assert radius == pytest.approx(v / w, rel=1e-3)
    # least-squares circle through the root path: |p|^2 = 2 p.c + (r^2 - |c|^2)
    a = torch.cat([2 * root, torch.ones(T, 1, dtype=root.dtype)], 1)
    sol = torch.linalg.lstsq(a, (root**2).sum(1, keepdim=True)).solution[:, 0]
    centre = sol[:2]
    d = (root - centre).norm(dim=1)
    assert torch.allclose(d, torch.full_like(d, radius), atol=1e-6)
    assert centre[0] < 0  # the centre lies to the right (-x) of the start


def test_foot_below_the_floor(hand_built):
    """A toe joint pushed 10 cm under the floor in frames 3-5 shows in the joint heights."""
    f = hand_built(10)
    toe = sk.LEFT_FOOT[1]
    f[3:6, sk.RIC.start + 3 * (toe - 1) + 1] = -0.10
    heights = joint_heights(f)
    assert torch.allclose(heights, recover_from_ric(f)[..., 1])
    low = heights.amin(-1)
    assert torch.allclose(low[3:6], torch.full((3,), -0.10, dtype=torch.float64))
    assert (low[:3] > -1e-9).all() and (low[6:] > -1e-9).all()


def test_converter_round_trip(rng):
    """Generated motions through the dataset converter and back: the same joints."""
    for kind in gait.KINDS:
        m = gait.generate(kind, 50, rng)
        f = joints_to_features(m.positions, m.rotations)
        assert f.shape == (49, sk.FEATURE_DIM)
        back = recover_from_ric(f.double())
        ref = normalise_motion(m.positions)[:-1]
        assert (back - ref).abs().max() < 1e-5, kind
        # floor at the lowest joint, first frame at the origin facing +z
        assert joint_heights(f).min() == pytest.approx(0.0, abs=1e-6)
        assert back[0, 0, [0, 2]].abs().max() < 1e-6
        assert abs(float(facing_angle(back[:1])[0])) < 1e-5


def test_left_turn_has_negative_rotation_velocity(rng):
    for _ in range(40):
        m = gait.generate("walk", 60, rng)
        if "left" in m.caption:
            f = joints_to_features(m.positions, m.rotations)
            assert f[:, 0].mean() < -0.005
            return
    pytest.skip("no left turn drawn")


def test_foot_contacts_standing_and_stats(rest_joints):
    still = rest_joints[None].expand(12, -1, -1).clone()
    f = joints_to_features(still)
    assert torch.equal(f[:, sk.FOOT_CONTACT], torch.ones(11, 4))
    mask = torch.ones(1, 11, dtype=torch.bool)
    mean, std = feature_stats(f[None], mask)
    assert mean.shape == std.shape == (sk.FEATURE_DIM,)
    assert (std >= 1e-3).all()
