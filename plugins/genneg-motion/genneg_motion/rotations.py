"""Small rotation helpers (torch, any batch shape): yaw rotations about +y, rotation matrices
from axis-angle, and the 6-D continuous representation (Zhou et al. 2019)."""

from __future__ import annotations

import torch


def rotate_y(v: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate vectors ``v [..., 3]`` about +y by ``angle [...]`` (right-handed):
    ``x' = x cos a + z sin a``, ``z' = -x sin a + z cos a``; the rotation of the unit
    quaternion ``(cos a/2, 0, sin a/2, 0)``."""
    c, s = torch.cos(angle), torch.sin(angle)
    x, y, z = v.unbind(-1)
    return torch.stack([x * c + z * s, y, -x * s + z * c], dim=-1)


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, ``[..., 3] -> [..., 3, 3]``."""
    angle = aa.norm(dim=-1, keepdim=True)
    axis = aa / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(aa.shape + (3,))
    a = angle[..., None]
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand(k.shape)
    return eye + torch.sin(a) * k + (1 - torch.cos(a)) * (k @ k)


def matrix_to_axis_angle(m: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`axis_angle_to_matrix` for angles in ``[0, pi)``."""
    cos = ((m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2] - 1) / 2).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cos)
    w = torch.stack(
        [m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]],
        dim=-1,
    )
    sin = torch.sin(angle)[..., None]
    scale = torch.where(
        sin.abs() > 1e-6, angle[..., None] / (2 * sin).clamp_min(1e-12), torch.full_like(sin, 0.5)
    )
    return w * scale


def euler_xyz_to_matrix(rx, ry, rz) -> torch.Tensor:
    """``R = Rz(rz) @ Ry(ry) @ Rx(rx)`` for angle tensors of one shape, ``-> [..., 3, 3]``."""

    def rot(axis, a):
        aa = torch.zeros(a.shape + (3,), dtype=a.dtype, device=a.device)
        aa[..., axis] = a
        return axis_angle_to_matrix(aa)

    return rot(2, rz) @ rot(1, ry) @ rot(0, rx)


def matrix_to_6d(m: torch.Tensor) -> torch.Tensor:
    """The first two columns, ``[..., 3, 3] -> [..., 6]`` (HumanML3D's ``cont6d`` order)."""
    return torch.cat([m[..., :, 0], m[..., :, 1]], dim=-1)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Gram-Schmidt on the two stored columns, ``[..., 6] -> [..., 3, 3]``."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)
