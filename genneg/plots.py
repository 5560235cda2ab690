"""Fig. 3-style curves of a run: infraction and ELBO across its stages. (Each domain draws its
own samples: :meth:`genneg.Dataset.plot_samples`.)"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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
