"""``genneg traffic ...``: build a dataset, run Table 1, label a dataset with the oracle."""

from __future__ import annotations

import json
import shutil
import sys

import click

from genneg_traffic.dataset import build, dataset_dir


@click.group("traffic")
def traffic():
    """Traffic scene generation (Gen-neG Sec. 4.2)."""


@traffic.command("build-dataset")
@click.option(
    "--preset",
    default=None,
    help="Build exactly the dataset of this preset "
    "(e.g. traffic-paper); the other options are then ignored.",
)
@click.option(
    "--source",
    type=click.Choice(["sumo", "synthetic"]),
    default="sumo",
    show_default=True,
    help="SUMO simulations (needs genneg-traffic[sumo]) or procedural roads.",
)
@click.option("--name", default=None, help="Dataset name (default: the source's).")
@click.option("--data-root", default="~/.cache/genneg", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-agents", default=None, type=int, help="Agents per scene (padding above).")
@click.option("--raster", default=None, type=int, help="Map raster resolution (pixels).")
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=JSON",
    help="A source option, e.g. --option snapshots=60 --option 'networks=[\"highway\"]'.",
)
@click.option("--force", is_flag=True, help="Rebuild an existing dataset directory.")
def build_dataset(preset, source, name, data_root, seed, max_agents, raster, options, force):
    """Simulate traffic, cut 80 m scenes and cache them under DATA_ROOT/traffic/NAME."""
    window = {k: v for k, v in (("max_agents", max_agents), ("raster", raster)) if v}
    source_options = {}
    for text in options:
        key, _, raw = text.partition("=")
        try:
            source_options[key] = json.loads(raw)
        except json.JSONDecodeError:
            source_options[key] = raw
    if preset:
        from genneg import get_registry

        cfg = get_registry().get("presets", preset)()
        opts = cfg.dataset.options
        name, source, data_root = opts["name"], opts["source"], cfg.data_root
        seed, window = opts.get("seed", 0), opts.get("window", {})
        source_options = opts.get("source_options", {})
    name = name or ("sumo" if source == "sumo" else "synthetic")
    out = dataset_dir(data_root, name)
    if (out / "meta.json").exists():
        if not force:
            raise click.ClickException(f"{out} exists; pass --force to rebuild it")
        shutil.rmtree(out)
    try:
        meta = build(
            out,
            source,
            seed=seed,
            window=window,
            source_options=source_options,
            progress=sys.stderr.isatty(),
            log=click.echo,
        )
    except (ValueError, TypeError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        json.dumps(
            {k: meta[k] for k in ("n_scenes", "n_maps", "cities", "test_city", "build_seconds")}
        )
    )


@traffic.command("table")
@click.option(
    "--size",
    type=click.Choice(["cpu", "sumo", "paper"]),
    default="cpu",
    show_default=True,
    help="cpu: synthetic roads; sumo: CPU sizes on SUMO traffic; paper: App. B.2 sizes (GPU).",
)
@click.option(
    "--out",
    default=None,
    help="Directory of the runs (default: runs/<preset>-table, e.g. runs/traffic-table).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key in every run, e.g. --set baseline.steps=500.",
)
@click.option("--rows", default=None, help="Comma-separated subset of the Table 1 rows.")
@click.option("--resume", is_flag=True, help="Continue killed runs.")
@click.option(
    "--jobs",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Rows run at once after the baseline, each in its own process (0: one per CPU core, "
    "one on a GPU).",
)
def table_cmd(size, out, assignments, rows, resume, jobs):
    """Table 1: baseline, by-scene, by-agent (w/ and w/o IS), stacked and distilled, sharing
    one baseline; writes table.md, a Fig. 1-style picture and infraction heat maps."""
    from genneg_traffic.table import run_table

    base = {"cpu": "traffic", "sumo": "traffic-sumo", "paper": "traffic-paper"}[size]
    out = out or f"runs/{base}-table"
    try:
        text = run_table(
            base,
            out,
            assignments=assignments,
            resume=resume,
            rows=rows.split(",") if rows else None,
            progress=sys.stderr.isatty(),
            log=click.echo,
            jobs=jobs,
        )
    except Exception as exc:  # show engine errors without a traceback
        from genneg import GennegError

        if isinstance(exc, (GennegError, ValueError)):
            raise click.ClickException(str(exc)) from None
        raise
    click.echo(text)
