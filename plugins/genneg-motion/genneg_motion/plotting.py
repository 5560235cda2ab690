"""Pictures of motions: skeleton frames over the floor, and the lowest joint's height per frame
(the oracle's view), with penetrating joints in red."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from genneg_motion import skeleton as sk  # noqa: E402
from genneg_motion.features import recover_from_ric  # noqa: E402


def draw_skeleton(ax, joints: np.ndarray, threshold: float, n_frames: int = 8) -> None:
    """``joints [T, 22, 3]`` on a 3-D axis: ``n_frames`` evenly spaced poses, later ones
    darker, a floor plane at ``y = 0``; joints below ``-threshold`` in red."""
    T = len(joints)
    idx = np.unique(np.linspace(0, T - 1, min(n_frames, T)).round().astype(int))
    xs, zs = joints[..., 0], joints[..., 2]
    lo = min(xs.min(), zs.min()) - 0.3
    hi = max(xs.max(), zs.max()) + 0.3
    mid_x, mid_z, half = (xs.max() + xs.min()) / 2, (zs.max() + zs.min()) / 2, (hi - lo) / 2
    gx, gz = np.meshgrid([mid_x - half, mid_x + half], [mid_z - half, mid_z + half])
    ax.plot_surface(gx, gz, np.zeros_like(gx), color="0.85", alpha=0.5, zorder=0)
    for k, t in enumerate(idx):
        shade = 0.25 + 0.75 * (k + 1) / len(idx)
        for chain in sk.CHAINS:
            p = joints[t, list(chain)]
            ax.plot(p[:, 0], p[:, 2], p[:, 1], color=(0.1, 0.3, 0.7, shade), lw=1.2)
        below = joints[t, :, 1] < -threshold
        if below.any():
            p = joints[t, below]
            ax.scatter(p[:, 0], p[:, 2], p[:, 1], color="red", s=12, depthshade=False)
    ax.plot(joints[:, 0, 0], joints[:, 0, 2], np.zeros(T), color="0.4", lw=0.8, ls="--")
    ax.set_xlim(mid_x - half, mid_x + half)
    ax.set_ylim(mid_z - half, mid_z + half)
    z_lo, z_hi = min(-0.3, joints[..., 1].min()), max(2.0, joints[..., 1].max())
    ax.set_zlim(z_lo, z_hi)
    ax.set_box_aspect((1, 1, min(1.5, (z_hi - z_lo) / (2 * half))))  # metres alike on all axes
    ax.set_xlabel("x (m)", fontsize=7)
    ax.set_ylabel("z (m)", fontsize=7)
    ax.set_zlabel("height (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.view_init(elev=12, azim=-60)


def draw_heights(ax, joints: np.ndarray, threshold: float) -> None:
    """The lowest joint's height per frame, the floor and the oracle's threshold."""
    low = joints[..., 1].min(axis=1)
    t = np.arange(len(low)) / sk.FPS
    ax.plot(t, low, color="tab:blue", lw=1.2)
    bad = low < -threshold
    ax.scatter(t[bad], low[bad], color="red", s=8, zorder=3)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.axhline(-threshold, color="red", lw=0.8, ls=":")
    ax.set_xlabel("time (s)", fontsize=7)
    ax.set_ylabel("lowest joint (m)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def motion_joints(features: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    """Joint positions of each motion's real frames."""
    joints = recover_from_ric(features.double())
    return [joints[i, mask[i]].cpu().numpy() for i in range(len(joints))]


def plot_motions(
    joints: list[np.ndarray], titles: list[str], path: str, suptitle: str, threshold: float
) -> None:
    """One column per motion: skeleton frames above, lowest-joint height below."""
    n = len(joints)
    fig = plt.figure(figsize=(3.6 * n, 5.6))
    for i, (j, title) in enumerate(zip(joints, titles)):
        ax = fig.add_subplot(2, n, i + 1, projection="3d")
        draw_skeleton(ax, j, threshold)
        ax.set_title(title, fontsize=8)
        draw_heights(fig.add_subplot(2, n, n + i + 1), j, threshold)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
