"""A run's results: the per-stage table (Table 1 / Fig. 3 numbers) as Markdown, and the files
that end a run (``results.md``, ``results.json``, ``plots/curves.png``)."""

from __future__ import annotations

import json
import math

from genneg.engine.evaluate import data_ceiling
from genneg.engine.rundir import atomic_path, atomic_write_text
from genneg.plots import stage_curves


def _pm(value, se, digits=2):
    if value is None:
        return "-"
    return f"{value:.{digits}f} ± {se:.{digits}f}"


def results_table(rows, *, categories=(), ceiling=None) -> str:
    """A Markdown table: stage, infraction % (± s.e.), per-category %, per-element %, ELBO,
    sampling cost."""
    has_element = any("element_infraction" in r for r in rows)
    kind = rows[0].get("elbo_kind", "elbo") if rows else "elbo"
    head = ["stage", "infraction %"] + [f"{c} %" for c in categories]
    if has_element:
        head.append("per element %")
    head.append(f"{'r-ELBO' if kind == 'r-elbo' else 'ELBO'} (nats/dim)")
    paired = any("elbo_diff" in r for r in rows)
    if paired:  # genneg.diagnostics.elbo_vs_baseline
        head += ["ELBO - baseline (paired)", "baseline - sum log alpha"]
    head += ["NFE/sample", "ms/sample"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["stage"], _pm(r["infraction"], r["infraction_se"])]
        for c in categories:
            cat = r.get("categories", {}).get(c)
            cells.append(_pm(cat["rate"], cat["se"]) if cat else "-")
        if has_element:
            cells.append(_pm(r.get("element_infraction"), r.get("element_infraction_se", 0)))
        cells.append(_pm(r["elbo"], r["elbo_se"], 3))
        if paired:
            has = "elbo_diff" in r
            cells.append(_pm(r["elbo_diff"], r["elbo_diff_se"], 3) if has else "-")
            cells.append(f"{r['elbo_ideal']:.3f}" if has else "-")
        cells += [
            f"{r['nfe_per_sample']:.0f}",
            f"{1000 * r['seconds_per_sample']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if ceiling is not None:
        lines.append("")
        lines.append(
            f"True data log-density on the same points: {ceiling:.3f} nats/dim "
            "(the ceiling the ELBO is measured against)."
        )
    return "\n".join(lines)


def write_results(exp, rd, rows: list[dict]) -> None:
    """Write the results table, its rows as JSON and the Fig. 3-style curves of a run."""
    ceiling = data_ceiling(exp)
    table = results_table(rows, categories=exp.oracle.categories, ceiling=ceiling)
    atomic_write_text(rd.path / "results.md", table + "\n")
    text = json.dumps({"rows": rows, "data_log_density": ceiling}, indent=1)
    atomic_write_text(rd.path / "results.json", text)
    if rows:
        with atomic_path(rd.path / "plots" / "curves.png") as tmp:
            stage_curves(rows, tmp, ceiling=ceiling if ceiling is not None else math.nan)
    rd.log("results:\n" + table)


def headline(row: dict) -> str:
    """A stage's headline metrics, for messages."""
    return (
        f"{row['stage']} has infraction {row['infraction']:.2f} ± {row['infraction_se']:.2f} % "
        f"in {row['n']} samples, {row['elbo_kind']} {row['elbo']:.4f} ± {row['elbo_se']:.4f} "
        "nats/dim"
    )
