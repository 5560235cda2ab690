"""Figures: Fig. 2-style sample scatters and Fig. 3-style curves across stages."""

from __future__ import annotations

import math

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


def stage_curves(rows, path, *, ceiling: float | None = None) -> None:
    """Infraction rate and ELBO per stage (Fig. 3): Gen-neG iterations as a line, the
    distilled model as a star."""
    iters = [r for r in rows if r["stage"] != "distill"]
    distilled = [r for r in rows if r["stage"] == "distill"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    xs = list(range(len(iters)))
    for ax, key, label in (
        (axes[0], "infraction", "infraction (%)"),
        (axes[1], "elbo", "ELBO (nats/dim)"),
    ):
        ys = [r[key] for r in iters]
        es = [r.get(f"{key}_se", 0.0) for r in iters]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="Gen-neG (stacked)")
        for r in distilled:
            ax.plot(
                [len(iters) - 1],
                [r[key]],
                marker="*",
                ms=12,
                color="tab:orange",
                linestyle="none",
                label="distilled",
            )
        ax.set_xticks(xs)
        ax.set_xticklabels([r["stage"] for r in iters], rotation=0, fontsize=8)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if ceiling is not None and math.isfinite(ceiling):
        axes[1].axhline(ceiling, color="gray", linestyle="--", label="true data log-density")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
