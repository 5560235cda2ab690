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
