"""Fig. 2-style scatters of checkerboard samples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def scatter_2d(x, valid, path, title: str, lim: float | None = None) -> None:
    """2-D samples, infracting ones (``valid`` False) in brown as in Fig. 2."""
    x = x.detach().cpu().numpy()
    ok = valid.cpu().numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[ok, 0], x[ok, 1], s=1.5, c="tab:blue", alpha=0.6, linewidths=0)
    ax.scatter(x[~ok, 0], x[~ok, 1], s=2.5, c="saddlebrown", alpha=0.9, linewidths=0)
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
