"""The mesh oracle on a small body model in SMPL's file format, generated here.

The file has SMPL's keys (``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``,
``weights``, ``kintree_table``, ``f``) and shapes, but 48 vertices: for each of the 24 joints one
vertex at the joint and one "sole" vertex 5 cm below it, each skinned to its joint only. Its rest
joints are genneg-motion's skeleton (plus two hand joints), so posing it from the features must
reproduce the recovered joints exactly, and its lowest vertex is 5 cm under the lowest joint in
the rest orientation.
"""

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("smplx")

from genneg_motion import skeleton as sk  # noqa: E402
from genneg_motion.features import joints_to_features, recover_from_ric  # noqa: E402
from genneg_motion.gait import forward_kinematics, generate  # noqa: E402
from genneg_motion.oracle import GroundPenetrationOracle  # noqa: E402
from genneg_motion.smpl_oracle import SMPLGroundPenetrationOracle  # noqa: E402
from genneg_motion.splits import pack  # noqa: E402

SOLE = 0.05


@pytest.fixture
def smpl_file(tmp_path):
    eye = torch.eye(3, dtype=torch.float64).expand(1, sk.N_JOINTS, 3, 3)
    rest, _ = forward_kinematics(eye, torch.tensor([[0.0, 0.92, 0.0]], dtype=torch.float64))
    rest = rest[0].numpy()
    hands = rest[[20, 21]] + np.array([[0.08, 0, 0], [-0.08, 0, 0]])
    joints = np.concatenate([rest, hands])  # 24 SMPL joints
    parents = list(sk.PARENTS) + [20, 21]
    verts = np.concatenate([joints, joints - [0, SOLE, 0]])  # [48, 3]
    V, J = len(verts), 24
    owner = np.concatenate([np.arange(J), np.arange(J)])
    weights = np.zeros((V, J))
    weights[np.arange(V), owner] = 1.0
    regressor = np.zeros((J, V))
    regressor[np.arange(J), np.arange(J)] = 1.0
    model = {
        "v_template": verts,
        "shapedirs": np.zeros((V, 3, 10)),
        "posedirs": np.zeros((V, 3, 207)),
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[2**32 - 1] + parents[1:], list(range(J))], dtype=np.int64),
        "f": np.array([[0, 1, 2], [24, 25, 26]], dtype=np.int64),
    }
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as fh:
        pickle.dump(model, fh)
    return path


def _split(feats, T):
    mean, std = torch.zeros(sk.FEATURE_DIM), torch.ones(sk.FEATURE_DIM)
    return pack(feats, mean, std, T)


def test_posed_mesh_follows_the_recovered_joints(smpl_file, rng):
    oracle = SMPLGroundPenetrationOracle(model_path=str(smpl_file))
    for kind in ("walk", "jump", "squat"):
        m = generate(kind, 30, rng)
        f = joints_to_features(m.positions, m.rotations)
        joints = recover_from_ric(f.double()).float()
        # vertex k (< 22) sits on joint k of the posed model
        from genneg_motion.smpl_oracle import pose_parameters

        orient, body_pose, root = pose_parameters(f.double())
        out = oracle.body(
            global_orient=orient.float(), body_pose=body_pose.float(), betas=torch.zeros(len(f), 10)
        )
        verts = out.vertices + (root.float() - out.joints[:, 0])[:, None]
        assert (verts[:, :22] - joints).abs().max() < 1e-4, kind


def test_lowest_vertex_and_labels(smpl_file, rest_joints):
    stand = joints_to_features(rest_joints[None].expand(11, -1, -1).clone())
    sunk = stand.clone()
    sunk[4:6, 3] -= 0.2  # the whole body 20 cm lower in frames 4-5
    sunk[4:6, sk.RIC.start + 1 : sk.RIC.stop : 3] -= 0.2
    b = _split([stand, sunk], 10)
    oracle = SMPLGroundPenetrationOracle(model_path=str(smpl_file), threshold=0.10)
    low = oracle.lowest_vertex(b.x)
    assert torch.allclose(low[0], torch.full((10,), -SOLE), atol=1e-5)
    assert torch.allclose(low[1, 4:6], torch.full((2,), -0.2 - SOLE), atol=1e-5)
    r = oracle.label(b.x, b.cond)
    assert r.valid.tolist() == [True, False]
    assert (~r.element_valid[1]).nonzero().flatten().tolist() == [4, 5]
    # the joint oracle agrees on which frames penetrate
    j = GroundPenetrationOracle(threshold=0.05).label(b.x, b.cond)
    assert torch.equal(j.element_valid, r.element_valid)


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMPL"):
        SMPLGroundPenetrationOracle(model_path=str(tmp_path / "nope.pkl"))
