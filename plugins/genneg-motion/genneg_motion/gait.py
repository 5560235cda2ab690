"""A parametric motion generator over the HumanML3D skeleton: walks, runs, turns, jumps and
squats as local joint rotations plus a root trajectory, posed by forward kinematics.

Every motion keeps contact with the floor (the root height puts the lowest joint on it, plus a
flight arc for jumps and runs), so true data never penetrates the ground; the infractions a
model makes are its own. Sign conventions (y up, facing +z, left = +x): a leg swings forward
under ``R_x(-a)``, a knee bends under ``R_x(+a)``, the spine leans forward under ``R_x(+a)``.
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch

from genneg_motion import skeleton as sk
from genneg_motion.rotations import euler_xyz_to_matrix

KINDS = ("walk", "run", "jump", "squat")


@attrs.frozen(kw_only=True)
class Motion:
    """One generated motion: joint positions ``[F, 22, 3]``, local rotations ``[F, 22, 3, 3]``
    and its caption."""

    positions: torch.Tensor
    rotations: torch.Tensor
    caption: str
    kind: str


def forward_kinematics(
    local: torch.Tensor, root_pos: torch.Tensor, offsets: np.ndarray = sk.REST_OFFSETS
):
    """Positions ``[F, 22, 3]`` and global rotations from local rotations ``[F, 22, 3, 3]``
    (joint 0's is global) and root positions ``[F, 3]``: ``p_j = p_parent + G_parent o_j``."""
    off = torch.as_tensor(offsets, dtype=local.dtype)
    glob = [local[:, 0]]
    pos = [root_pos]
    for j in range(1, sk.N_JOINTS):
        par = sk.PARENTS[j]
        pos.append(pos[par] + glob[par] @ off[j])
        glob.append(glob[par] @ local[:, j])
    return torch.stack(pos, 1), torch.stack(glob, 1)


def _rx(a):
    z = torch.zeros_like(a)
    return euler_xyz_to_matrix(a, z, z)


def _rz(a):
    z = torch.zeros_like(a)
    return euler_xyz_to_matrix(z, z, a)


def _ry(a):
    z = torch.zeros_like(a)
    return euler_xyz_to_matrix(z, a, z)


def _relu(a):
    return torch.clamp(a, min=0)


def _pose(n, *, hip_l, hip_r, knee_l, knee_r, ankle_l, ankle_r, lean, arm_l, arm_r, elbow, yaw):
    """Local rotations ``[n, 22, 3, 3]`` from sagittal angles (tensors ``[n]``)."""
    eye = torch.eye(3, dtype=torch.float64).expand(n, sk.N_JOINTS, 3, 3).clone()
    eye[:, 0] = _ry(yaw)
    eye[:, 1] = _rx(-hip_l)
    eye[:, 2] = _rx(-hip_r)
    eye[:, 4] = _rx(knee_l)
    eye[:, 5] = _rx(knee_r)
    eye[:, 7] = _rx(-ankle_l)
    eye[:, 8] = _rx(-ankle_r)
    eye[:, 3] = _rx(lean / 3)
    eye[:, 6] = _rx(lean / 3)
    eye[:, 9] = _rx(lean / 3)
    eye[:, 12] = _rx(-lean / 2)
    drop = torch.full((n,), 1.25, dtype=torch.float64)
    eye[:, 16] = _rx(-arm_l) @ _rz(-drop)
    eye[:, 17] = _rx(-arm_r) @ _rz(drop)
    eye[:, 18] = _ry(-elbow)
    eye[:, 19] = _ry(elbow)
    return eye


def generate(kind: str, frames: int, rng: np.random.Generator) -> Motion:
    """One motion of ``kind`` with ``frames`` frames at 20 fps and random parameters."""
    if kind not in KINDS:
        raise ValueError(f"unknown motion kind {kind!r}; choose from {KINDS}")
    t = torch.arange(frames, dtype=torch.float64) / sk.FPS
    n = frames
    zeros = torch.zeros(n, dtype=torch.float64)
    lift = zeros.clone()
    speed, turn = 0.0, 0.0
    if kind in ("walk", "run"):
        run = kind == "run"
        speed = rng.uniform(2.0, 3.2) if run else rng.uniform(0.6, 1.5)
        turn = rng.choice([0.0, 0.0, rng.uniform(0.4, 0.9), -rng.uniform(0.4, 0.9)])
        freq = (1.3 if run else 0.75) + 0.25 * speed + rng.uniform(-0.05, 0.05)
        ph = 2 * math.pi * freq * t + rng.uniform(0, 2 * math.pi)
        amp = (0.55 if run else 0.3) + 0.08 * speed
        hip_l, hip_r = amp * torch.sin(ph), amp * torch.sin(ph + math.pi)
        kmax = 1.5 if run else 0.9
        knee_l = 0.1 + kmax * _relu(torch.sin(ph - 1.2)) ** 2
        knee_r = 0.1 + kmax * _relu(torch.sin(ph + math.pi - 1.2)) ** 2
        ankle_l, ankle_r = 0.15 * torch.sin(ph - 0.5), 0.15 * torch.sin(ph + math.pi - 0.5)
        lean = torch.full((n,), 0.25 if run else 0.05, dtype=torch.float64)
        arm_l, arm_r = -0.8 * hip_l, -0.8 * hip_r
        elbow = torch.full((n,), 1.3 if run else 0.3, dtype=torch.float64)
        if run:
            lift = 0.06 * _relu(torch.cos(2 * ph)) ** 2
        adverb = (
            "quickly "
            if speed > (2.6 if run else 1.15)
            else ("slowly " if speed < (2.4 if run else 0.9) else "")
        )
        verb = "runs" if run else "walks"
        caption = (
            f"a person {verb} {adverb}forward"
            if turn == 0
            else f"a person {verb} {adverb}in a curve to the {'left' if turn > 0 else 'right'}"
        )
    elif kind == "jump":
        forward = rng.random() < 0.5
        speed = rng.uniform(0.8, 1.6) if forward else 0.0
        height = rng.uniform(0.15, 0.4)
        start = rng.uniform(0.2, 0.35) * t[-1].item()
        crouch_d, flight_d = 0.45, 2 * math.sqrt(2 * height / 9.81)
        u = (t - start) / crouch_d  # crouch then take off
        bend = torch.where(u < 0, zeros, torch.where(u < 1, torch.sin(math.pi * u / 2) ** 2, zeros))
        tf = t - start - crouch_d
        air = (tf > 0) & (tf < flight_d)
        lift = torch.where(air, 4 * height * (tf / flight_d) * (1 - tf / flight_d), zeros)
        land = tf - flight_d
        bend = bend + torch.where(
            (land > 0) & (land < 0.5), torch.sin(math.pi * land / 0.5) * 0.7, zeros
        )
        tuck = torch.where(air, torch.sin(math.pi * tf / flight_d) * 0.5, zeros)
        hip_l = hip_r = 0.9 * bend + tuck
        knee_l = knee_r = 1.5 * bend + 0.9 * tuck
        ankle_l = ankle_r = -0.6 * bend
        lean = 0.5 * bend
        arm_l = arm_r = -1.2 * bend + 1.5 * tuck
        elbow = 0.3 + 0.4 * bend
        speed_profile = torch.where(air, torch.ones_like(t), zeros)
        caption = "a person jumps forward" if forward else "a person jumps in place"
        if height > 0.3:
            caption = caption.replace("jumps", "jumps high")
    else:  # squat
        reps = rng.integers(1, 3)
        depth = rng.uniform(0.6, 1.0)
        ph = math.pi * reps * t / t[-1]
        bend = depth * torch.sin(ph) ** 2
        hip_l = hip_r = 1.2 * bend
        knee_l = knee_r = 2.0 * bend
        ankle_l = ankle_r = -0.7 * bend
        lean = 0.9 * bend
        arm_l = arm_r = 1.3 * bend
        elbow = 0.2 + 0.3 * bend
        caption = "a person squats down" + (" twice" if reps == 2 else "")
    yaw0 = rng.uniform(-math.pi, math.pi)
    yaw = yaw0 + turn * t
    local = _pose(
        n,
        hip_l=hip_l,
        hip_r=hip_r,
        knee_l=knee_l,
        knee_r=knee_r,
        ankle_l=ankle_l,
        ankle_r=ankle_r,
        lean=lean,
        arm_l=arm_l,
        arm_r=arm_r,
        elbow=elbow if torch.is_tensor(elbow) else torch.full((n,), elbow),
        yaw=yaw,
    )
    # root path: speed along the heading (jumps move only while airborne)
    v = torch.full((n,), speed, dtype=torch.float64)
    if kind == "jump":
        v = speed * speed_profile
    dx = v * torch.sin(yaw) / sk.FPS
    dz = v * torch.cos(yaw) / sk.FPS
    root = torch.stack([torch.cumsum(dx, 0), zeros, torch.cumsum(dz, 0)], -1)
    pos, _ = forward_kinematics(local, root)
    # the lowest joint on the floor in every frame, plus the flight arc
    root[:, 1] = -pos[..., 1].amin(dim=1) + lift
    pos, _ = forward_kinematics(local, root)
    return Motion(positions=pos, rotations=local, caption=caption, kind=kind)


def generate_many(
    n: int, rng: np.random.Generator, *, min_frames: int, max_frames: int, kinds=KINDS, weights=None
) -> list[Motion]:
    """``n`` motions with kinds drawn by ``weights`` and lengths uniform in
    ``[min_frames, max_frames]`` (feature frames; one more position frame is generated)."""
    p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    out = []
    for _ in range(n):
        kind = kinds[rng.choice(len(kinds), p=p)]
        frames = int(rng.integers(min_frames, max_frames + 1)) + 1
        out.append(generate(kind, frames, rng))
    return out
