"""The 22-joint HumanML3D skeleton (SMPL's first 22 joints) and the 263-d feature layout.

Axes: y is up, a character in its canonical frame faces +z and its left side is +x (SMPL's
convention, kept by HumanML3D). Lengths are metres, the frame rate is 20 fps.
"""

from __future__ import annotations

import numpy as np

FPS = 20
N_JOINTS = 22
MAX_FRAMES = 196

JOINT_NAMES = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
)
#: Parent of each joint (-1 for the root), as in SMPL's kinematic tree.
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19)
#: HumanML3D's kinematic chains (legs, spine, arms), used for drawing.
CHAINS = (
    (0, 2, 5, 8, 11),
    (0, 1, 4, 7, 10),
    (0, 3, 6, 9, 12, 15),
    (9, 14, 17, 19, 21),
    (9, 13, 16, 18, 20),
)
LEFT_FOOT = (7, 10)  # ankle, toe joint
RIGHT_FOOT = (8, 11)
HIPS = (1, 2)  # left, right
SHOULDERS = (16, 17)  # left, right

#: Rest-pose (T-pose) offsets of each joint from its parent: an average adult, with the toe
#: joints 0.92 m below the pelvis (our own estimate, not HumanML3D's subject).
REST_OFFSETS = np.array(
    [
        [0.0, 0.0, 0.0],  # pelvis
        [0.07, -0.09, 0.0],  # left hip
        [-0.07, -0.09, 0.0],  # right hip
        [0.0, 0.11, -0.01],  # spine1
        [0.01, -0.38, 0.0],  # left knee
        [-0.01, -0.38, 0.0],  # right knee
        [0.0, 0.13, 0.01],  # spine2
        [0.0, -0.40, -0.02],  # left ankle
        [0.0, -0.40, -0.02],  # right ankle
        [0.0, 0.05, 0.01],  # spine3
        [0.02, -0.05, 0.12],  # left foot (toes)
        [-0.02, -0.05, 0.12],  # right foot
        [0.0, 0.22, -0.02],  # neck
        [0.08, 0.12, -0.01],  # left collar
        [-0.08, 0.12, -0.01],  # right collar
        [0.0, 0.09, 0.05],  # head
        [0.11, 0.03, -0.01],  # left shoulder
        [-0.11, 0.03, -0.01],  # right shoulder
        [0.26, 0.0, -0.02],  # left elbow
        [-0.26, 0.0, -0.02],  # right elbow
        [0.25, 0.0, 0.0],  # left wrist
        [-0.25, 0.0, 0.0],  # right wrist
    ]
)

# --- the 263-d HumanML3D feature vector of one frame ---
ROOT_ROT_VEL = slice(0, 1)  # yaw increment to the next frame (half-angle, rad)
ROOT_LIN_VEL = slice(1, 3)  # root x, z displacement to the next frame, in the facing frame
ROOT_Y = slice(3, 4)  # root height above the floor
RIC = slice(4, 4 + 21 * 3)  # joints 1..21: position relative to the root's ground point,
#                                 in the facing frame; y is the absolute height
ROT = slice(67, 67 + 21 * 6)  # joints 1..21: local rotation, 6-D (two matrix columns)
LOCAL_VEL = slice(193, 193 + 22 * 3)  # all joints' velocity in the facing frame
FOOT_CONTACT = slice(259, 263)  # left ankle, left toe, right ankle, right toe (0/1)
FEATURE_DIM = 263

#: Feature groups whose standard deviation HumanML3D averages when normalising.
FEATURE_GROUPS = (ROOT_ROT_VEL, ROOT_LIN_VEL, ROOT_Y, RIC, ROT, LOCAL_VEL, FOOT_CONTACT)
