"""Figures: scenes with infracting vehicles highlighted (Fig. 1 style) and infraction heat maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import shapely

from genneg_traffic.geometry import corners

COLOURS = {"ok": "#2b7bba", "collision": "#d62728", "offroad": "#ff7f0e", "degenerate": "#7f7f7f"}


def _draw_map(ax, geom, half):
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    geom = shapely.intersection(geom, shapely.box(-half, -half, half, half))
    for poly in getattr(geom, "geoms", [geom]):
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        rings = [np.asarray(poly.exterior.coords)] + [np.asarray(r.coords) for r in poly.interiors]
        verts = np.concatenate(rings)
        codes = np.concatenate(
            [[MPath.MOVETO] + [MPath.LINETO] * (len(r) - 2) + [MPath.CLOSEPOLY] for r in rings]
        )
        ax.add_patch(PathPatch(MPath(verts, codes), facecolor="#dddddd", edgecolor="none"))


def plot_scenes(
    split,
    result,
    maps,
    normalizer,
    path,
    title,
    n: int = 12,
    half: float = 40.0,
    agent_flags: dict | None = None,
):
    """A grid of up to ``n`` scenes: road grey, valid vehicles blue, colliding red, offroad
    orange (by-agent labels when the result has them)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(split))
    cols = min(4, n)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    x = normalizer.denormalize(split.x[:n].double().numpy())
    mask = split.cond["mask"][:n].numpy()
    ev = None if result.element_valid is None else result.element_valid[:n].numpy()
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= n:
            continue
        _draw_map(ax, maps[int(split.cond["map_id"][k])], half)
        a = x[k][mask[k]]
        heading = np.arctan2(a[:, 5], a[:, 4])
        pts = corners(a[:, 0], a[:, 1], np.abs(a[:, 2]), np.abs(a[:, 3]), heading)
        bad = np.zeros(len(a), bool) if ev is None else ~ev[k][mask[k]]
        for i, poly in enumerate(pts):
            colour = COLOURS["collision"] if bad[i] else COLOURS["ok"]
            ax.fill(poly[:, 0], poly[:, 1], color=colour, alpha=0.85, lw=0.5)
            front = poly[[0, 3]].mean(0)
            ax.plot([a[i, 0], front[0]], [a[i, 1], front[1]], color="k", lw=0.5)
        ax.set_xlim(-half, half)
        ax.set_ylim(-half, half)
        ax.set_aspect("equal")
        ax.set_title(
            "valid" if bool(result.valid[k]) else "infraction",
            fontsize=8,
            color="k" if bool(result.valid[k]) else COLOURS["collision"],
        )
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def infraction_heatmap(
    panels: list[tuple[str, np.ndarray, int]], path, half: float = 40.0, bins: int = 16
):
    """Heat maps of infracting vehicles per unit area (per 100 m^2 per 1000 scenes) over the
    scene window, one panel per ``(title, centres [K, 2] of infracting vehicles, n_scenes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cell = (2 * half / bins) ** 2
    hists = []
    for _, pts, n in panels:
        h, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=bins, range=[[-half, half]] * 2)
        hists.append(h.T / cell * 100 / max(n, 1) * 1000)
    vmax = max(float(h.max()) for h in hists) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (title, _, n), h in zip(axes.flat, panels, hists):
        im = ax.imshow(
            h, origin="lower", extent=[-half, half, -half, half], vmin=0, vmax=vmax, cmap="magma"
        )
        ax.set_title(f"{title}\n({n} scenes)", fontsize=9)
        ax.set_xlabel("x (m)")
    axes.flat[0].set_ylabel("y (m)")
    fig.colorbar(im, ax=list(axes.flat), label="infracting vehicles / 100 m² / 1000 scenes")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
