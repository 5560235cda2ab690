"""The ground-penetration oracle on hand-built and generated motions."""

import pytest
import torch
from genneg_motion import skeleton as sk
from genneg_motion.features import joints_to_features
from genneg_motion.gait import generate
from genneg_motion.oracle import CATEGORY, GroundPenetrationOracle
from genneg_motion.splits import pack

from genneg.testing import OracleContract


def _standing(rest_joints, T=12):
    return joints_to_features(rest_joints[None].expand(T + 1, -1, -1).clone())


def _batch(feats, T=12):
    mean = torch.zeros(sk.FEATURE_DIM)
    std = torch.ones(sk.FEATURE_DIM)
    return pack(feats, mean, std, T)


def _sink(f, frames, depth, joint=sk.LEFT_FOOT[1]):
    f = f.clone()
    f[frames, sk.RIC.start + 3 * (joint - 1) + 1] = -depth
    return f


def test_walk_is_valid_and_a_sunken_foot_is_not(rest_joints, rng):
    walk = joints_to_features(generate("walk", 13, rng).positions)
    stand = _standing(rest_joints)
    sunk = _sink(stand, slice(4, 7), 0.12)
    b = _batch([walk, stand, sunk])
    r = GroundPenetrationOracle(threshold=0.05).label(b.x, b.cond)
    assert r.valid.tolist() == [True, True, False]
    assert r.categories[CATEGORY].tolist() == [False, False, True]
    assert (~r.element_valid[2]).nonzero().flatten().tolist() == [4, 5, 6]
    assert r.element_valid[:2].all()
    # "Inf. per step": 3 of 36 real frames
    per_step = float((~r.element_valid & b.cond["mask"]).sum() / b.cond["mask"].sum())
    assert per_step == pytest.approx(3 / 36)


def test_hand_built_walk_and_turn(hand_built):
    """Straight walk and root turn, written by hand: valid; the same with the right toe 3 cm
    under the floor in frame 7 (of the turn): that frame alone infracts."""
    walk = hand_built(12, speed=1.2).float()
    turn = hand_built(12, speed=1.0, turn=0.8).float()
    sunk = _sink(turn, slice(7, 8), 0.03, joint=sk.RIGHT_FOOT[1])
    b = _batch([walk, turn, sunk])
    r = GroundPenetrationOracle(threshold=0.01).label(b.x, b.cond)
    assert r.valid.tolist() == [True, True, False]
    assert (~r.element_valid).nonzero().tolist() == [[2, 7]]


def test_threshold_is_strict_and_in_metres(rest_joints):
    stand = _standing(rest_joints)
    b = _batch([_sink(stand, slice(2, 3), 0.049), _sink(stand, slice(2, 3), 0.051)])
    assert GroundPenetrationOracle(threshold=0.05).label(b.x, b.cond).valid.tolist() == [
        True,
        False,
    ]
    assert GroundPenetrationOracle(threshold=0.0).label(b.x, b.cond).valid.tolist() == [
        False,
        False,
    ]
    with pytest.raises(ValueError, match="threshold"):
        GroundPenetrationOracle(threshold=-1)


def test_padded_frames_are_ignored(rest_joints):
    stand = _standing(rest_joints, T=8)
    sunk = _sink(stand, slice(6, 8), 0.3)
    b = _batch([sunk[:6]], T=8)  # the sunken frames are cut off: padding
    b.x[0, 6:, sk.RIC.start + 3 * (sk.LEFT_FOOT[1] - 1) + 1] = -0.3
    r = GroundPenetrationOracle().label(b.x, b.cond)
    assert bool(r.valid[0]) and r.element_valid[0].all()


def test_normalised_input_needs_statistics(rest_joints):
    b = _batch([_standing(rest_joints)])
    with pytest.raises(KeyError, match="feat_mean"):
        GroundPenetrationOracle().label(b.x, {"mask": b.cond["mask"]})


class TestOracleContract(OracleContract):
    def make_oracle(self):
        return GroundPenetrationOracle()

    def make_batch(self, n):
        g = torch.Generator().manual_seed(n)
        x = 0.5 * torch.randn(n, 10, sk.FEATURE_DIM, generator=g)
        mean = torch.zeros(sk.FEATURE_DIM)
        mean[3] = 0.9
        mean[sk.RIC] = 0.3
        cond = {
            "mask": torch.ones(n, 10, dtype=torch.bool),
            "feat_mean": mean.expand(n, -1),
            "feat_std": torch.full((n, sk.FEATURE_DIM), 0.2),
        }
        return x, cond
