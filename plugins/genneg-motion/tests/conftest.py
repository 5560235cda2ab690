import numpy as np
import pytest
import torch
from genneg_motion import skeleton as sk
from genneg_motion.gait import forward_kinematics


def pytest_configure(config):
    torch.set_num_threads(1)


@pytest.fixture
def rest_joints():
    """The T-pose, root at 0.92 m (toes on the floor), ``[22, 3]``."""
    eye = torch.eye(3, dtype=torch.float64).expand(1, sk.N_JOINTS, 3, 3)
    pos, _ = forward_kinematics(eye, torch.tensor([[0.0, 0.92, 0.0]], dtype=torch.float64))
    return pos[0]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def hand_built(rest_joints):
    """Features written by hand (no converter): the T-pose for ``T`` frames, moving forward at
    ``speed`` m/s and turning at ``turn`` rad/s."""

    def make(T, speed=0.0, turn=0.0):
        f = torch.zeros(T, sk.FEATURE_DIM, dtype=torch.float64)
        f[:, 0] = turn / sk.FPS / 2  # half the yaw increment per frame
        f[:, 2] = speed / sk.FPS
        f[:, 3] = rest_joints[0, 1]
        rel = rest_joints[1:].clone()
        rel[:, [0, 2]] -= rest_joints[0, [0, 2]]
        f[:, sk.RIC] = rel.reshape(-1)
        return f

    return make
