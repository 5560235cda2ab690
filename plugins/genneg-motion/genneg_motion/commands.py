"""``genneg motion ...``: the Table 2 runner and the MDM checkpoint importer."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("motion")
def motion():
    """Motion diffusion with a ground-penetration oracle (Gen-neG Sec. 4.3)."""


@motion.command("table2")
@click.option(
    "--preset",
    default="motion",
    show_default=True,
    help="Base preset (motion: CPU minutes; motion-paper: App. B.3).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Directory for both runs and the table (default: runs/<preset>-table2).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key of the preset, e.g. --set eval.n_samples=2000.",
)
@click.option(
    "--per-frame",
    is_flag=True,
    help="Add a row with a per-frame classifier trained on the frame labels.",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def table2_cmd(preset, out, assignments, per_frame, no_progress):
    """Run Table 2: MDM, + classifier, + classifier w/o IS (one shared baseline)."""
    from genneg_motion.table2 import run_table2

    out = out or str(Path("runs") / f"{preset}-table2")
    progress = not no_progress and sys.stderr.isatty()
    path = run_table2(preset, out, assignments, progress=progress, per_frame=per_frame)
    click.echo(path.read_text())
    click.echo(f"runs, table2.md, table2.json and table2.png in {out}")


@motion.command("import-mdm")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    required=True,
    help="Directory to write ckpt/baseline.pt into (use it as baseline_from).",
)
@click.option(
    "--preset",
    default="motion-paper",
    show_default=True,
    help="Preset whose denoiser options the checkpoint must fit.",
)
def import_mdm_cmd(checkpoint, out, preset):
    """Convert an official MDM checkpoint (e.g. model000475000.pt) into a genneg baseline."""
    from genneg_motion.mdm_import import import_mdm

    path = import_mdm(checkpoint, out, preset)
    click.echo(f"wrote {path}; run with --set baseline_from={out}")
