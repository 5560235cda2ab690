"""HumanML3D's 263-d motion features: joints -> features (the dataset's converter) and
features -> joints (``recover_from_ric`` semantics), written from the format's definition.

A motion of ``F`` frames of joint positions becomes ``F - 1`` feature rows (the last frame only
serves the velocities of the one before it). Per row ``t`` (see :mod:`genneg_motion.skeleton`):

* ``root_rot_vel``: half the yaw increment from frame ``t`` to ``t+1`` (HumanML3D stores the
  arcsin of the y-component of the relative yaw quaternion, i.e. half the angle);
* ``root_lin_vel``: the root's x, z displacement to frame ``t+1``, rotated into the facing frame
  of frame ``t+1``;
* ``root_y``: the root height above the floor;
* ``ric``: joints 1..21 relative to the root's ground point (x, z) in the facing frame of frame
  ``t``, with the absolute height as y (rotation-invariant coordinates);
* ``rot``: local joint rotations of joints 1..21, 6-D;
* ``local_vel``: every joint's displacement to frame ``t+1`` in the facing frame of frame ``t``;
* ``foot_contact``: 1 where a foot joint moves less than ``sqrt(0.002)`` m per frame.

The converter puts the floor at the lowest joint of the whole motion, the first root position
at the origin and the first facing direction along +z, as HumanML3D's processing does (without
its retargeting to one skeleton and its smoothing of the facing direction, which do not change
the recovered positions).
"""

from __future__ import annotations

import math

import torch

from genneg_motion import skeleton as sk
from genneg_motion.rotations import matrix_to_6d, rotate_y

FOOT_CONTACT_THRESHOLD = 0.002  # squared metres per frame, HumanML3D's feet_thre


def facing_angle(positions: torch.Tensor) -> torch.Tensor:
    """Yaw ``phi`` per frame that turns the body's forward direction onto +z (``[..., F]``).

    Forward is ``up x across`` with ``across`` the right-minus-left hip and shoulder vectors.
    """
    l_hip, r_hip = sk.HIPS
    l_sh, r_sh = sk.SHOULDERS
    across = (positions[..., r_hip, :] - positions[..., l_hip, :]) + (
        positions[..., r_sh, :] - positions[..., l_sh, :]
    )
    # up x across with up = +y: (across_z, 0, -across_x)
    fx, fz = across[..., 2], -across[..., 0]
    heading = torch.atan2(fx, fz)  # angle of forward from +z towards +x
    return -heading


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def normalise_motion(positions: torch.Tensor) -> torch.Tensor:
    """Floor at the lowest joint, first root ground point at the origin, first facing +z."""
    p = positions.clone()
    p[..., 1] -= p[..., 1].amin(dim=(-1, -2), keepdim=True)
    p[..., [0, 2]] -= p[..., :1, :1, [0, 2]]
    phi0 = facing_angle(p[..., :1, :, :])  # [..., 1]
    return rotate_y(p, phi0[..., None])


def joints_to_features(
    positions: torch.Tensor, local_rotations: torch.Tensor | None = None, *, normalise: bool = True
) -> torch.Tensor:
    """Joint positions ``[F, 22, 3]`` (metres, y up) -> HumanML3D features ``[F - 1, 263]``.

    :param local_rotations: ``[F, 22, 3, 3]`` rotations of each joint relative to its parent,
        where known (HumanML3D computes them by inverse kinematics); identity otherwise.
    :param normalise: apply :func:`normalise_motion` first (as the dataset does).
    """
    if positions.ndim != 3 or positions.shape[1:] != (sk.N_JOINTS, 3):
        raise ValueError(f"positions must be [F, 22, 3], got {tuple(positions.shape)}")
    if positions.shape[0] < 2:
        raise ValueError("a motion needs at least 2 frames")
    p = positions.double()
    if normalise:
        p = normalise_motion(p)
    n = p.shape[0]
    phi = facing_angle(p)  # [F]
    root = p[:, 0]
    # root: half yaw increments, displacement in the next frame's facing frame, height
    rot_vel = _wrap(phi[1:] - phi[:-1]) / 2
    step = root[1:] - root[:-1]
    lin_vel = rotate_y(step, phi[1:])[:, [0, 2]]
    root_y = root[:-1, 1:2]
    # rotation-invariant joint coordinates
    rel = p.clone()
    rel[..., [0, 2]] -= root[:, None, [0, 2]]
    ric = rotate_y(rel, phi[:, None])[:, 1:].reshape(n, -1)
    if local_rotations is None:
        rots = torch.eye(3, dtype=p.dtype).expand(n, sk.N_JOINTS, 3, 3)
    else:
        rots = local_rotations.to(p.dtype)
    rot6 = matrix_to_6d(rots[:, 1:]).reshape(n, -1)
    local_vel = rotate_y(p[1:] - p[:-1], phi[:-1, None]).reshape(n - 1, -1)
    contacts = []
    for foot in (sk.LEFT_FOOT, sk.RIGHT_FOOT):
        d2 = ((p[1:, list(foot)] - p[:-1, list(foot)]) ** 2).sum(-1)
        contacts.append((d2 < FOOT_CONTACT_THRESHOLD).to(p.dtype))
    feats = torch.cat(
        [rot_vel[:, None], lin_vel, root_y, ric[:-1], rot6[:-1], local_vel, *contacts], dim=-1
    )
    assert feats.shape[-1] == sk.FEATURE_DIM
    return feats.float()


def recover_root(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Root yaw ``phi [..., T]`` and root position ``[..., T, 3]`` from features ``[..., T, 263]``
    by integrating the root velocities from the origin, facing +z."""
    half = features[..., 0]
    ang = torch.cumsum(torch.cat([torch.zeros_like(half[..., :1]), half[..., :-1]], -1), -1)
    phi = 2 * ang
    step = torch.zeros(features.shape[:-1] + (3,), dtype=features.dtype, device=features.device)
    step[..., 1:, 0] = features[..., :-1, 1]
    step[..., 1:, 2] = features[..., :-1, 2]
    pos = torch.cumsum(rotate_y(step, -phi), dim=-2)
    height = features[..., 3]
    pos = torch.stack([pos[..., 0], height, pos[..., 2]], dim=-1)
    return phi, pos


def recover_from_ric(features: torch.Tensor) -> torch.Tensor:
    """Joint positions ``[..., T, 22, 3]`` from features ``[..., T, 263]``: the root from its
    integrated velocities, the other joints from their rotation-invariant coordinates, turned
    back by the root yaw and moved to the root's ground point."""
    if features.shape[-1] != sk.FEATURE_DIM:
        raise ValueError(f"features must have {sk.FEATURE_DIM} channels, got {features.shape[-1]}")
    phi, root = recover_root(features)
    ric = features[..., sk.RIC].reshape(features.shape[:-1] + (sk.N_JOINTS - 1, 3))
    joints = rotate_y(ric, -phi[..., None])
    joints = (
        joints
        + torch.stack([root[..., 0], torch.zeros_like(root[..., 0]), root[..., 2]], -1)[
            ..., None, :
        ]
    )
    return torch.cat([root[..., None, :], joints], dim=-2)


def joint_heights(features: torch.Tensor) -> torch.Tensor:
    """Height above the floor of all 22 joints, ``[..., T, 22]``. Heights need no integration:
    ``root_y`` and the y of the rotation-invariant coordinates are absolute, so this equals
    ``recover_from_ric(features)[..., 1]`` at a fraction of the cost."""
    ric_y = features[..., sk.RIC].reshape(features.shape[:-1] + (sk.N_JOINTS - 1, 3))[..., 1]
    return torch.cat([features[..., 3:4], ric_y], dim=-1)


def feature_stats(features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-3):
    """Mean and std ``[263]`` over real frames, with each feature group's std replaced by the
    group's average (as HumanML3D's ``Mean.npy``/``Std.npy`` are made), floored at ``eps``."""
    real = features[mask].double()
    mean = real.mean(0)
    std = real.std(0)
    for group in sk.FEATURE_GROUPS:
        std[group] = std[group].mean()
    return mean.float(), std.clamp_min(eps).float()
