"""The ``genneg`` command: ``run``, ``eval``, ``plugins``, ``presets``, and the commands that
plugins register (``register_commands``; genneg's own ``bench`` and ``sample`` too)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from genneg import config as config_mod
from genneg.errors import GennegError
from genneg.plugins import PluginError, UnknownComponentError, get_registry

#: What the commands report as a one-line error rather than a traceback.
USER_ERRORS = (GennegError, PluginError, UnknownComponentError, OSError)


class CLIError(click.ClickException):
    pass


def _resolve(preset: str, files, assignments):
    from genneg import resolve_config

    try:
        return resolve_config(preset, files, assignments)
    except USER_ERRORS as exc:
        raise CLIError(str(exc)) from None


class _RootGroup(click.Group):
    """The root group: its own commands, then those that plugins registered through
    ``register_commands`` (genneg's own ``bench`` and ``sample`` among them), looked up in the
    plugin registry when the command line is parsed."""

    def _registered(self) -> dict:
        try:
            entries = get_registry().entries["commands"]
        except Exception as exc:  # a broken registry must not break the core commands
            click.echo(f"warning: plugin commands unavailable: {exc}", err=True)
            return {}
        clash = sorted(set(entries) & set(self.commands))
        for name in clash:
            click.echo(
                f"warning: plugin {entries[name].plugin!r} registered the command {name!r}, "
                "which genneg already has; it is ignored",
                err=True,
            )
        return {k: e.obj for k, e in entries.items() if k not in clash}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self._registered()))

    def get_command(self, ctx, name):
        return super().get_command(ctx, name) or self._registered().get(name)


@click.group(cls=_RootGroup)
@click.version_option(package_name="genneg")
def cli():
    """Oracle-assisted guidance of diffusion models (Gen-neG)."""
    from genneg.threads import configure

    configure(None)  # every command uses the free cores; `run --threads N` fixes the count


@cli.command("run")
@click.argument("preset")
@click.option(
    "--config",
    "files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="TOML file overriding the preset (repeatable).",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override one config key, e.g. --set classifier.train.steps=500.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: runs/<preset>).",
)
@click.option("--resume", is_flag=True, help="Continue a killed run from its last finished stage.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option(
    "--oracle-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Label in this many CPU processes, overlapped with sampling (for slow oracles; "
    "same labels as inline).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="torch intra-op threads, fixed (0: the free cores, genneg/threads.py).",
)
def run_cmd(preset, files, assignments, out, resume, dry_run, no_progress, oracle_workers, threads):
    """Run the Gen-neG experiment PRESET (see `genneg presets`).

    Under torchrun (`torchrun --nproc_per_node=N -m genneg run PRESET`) the ranks share the
    work and rank 0 writes the run directory (docs/distributed.md)."""
    from genneg.threads import configure

    configure(threads)
    cfg = _resolve(preset, files, assignments)
    if dry_run:
        click.echo(config_mod.dumps_toml(cfg))
        return
    from genneg import distributed
    from genneg.engine.runner import run

    out = out or str(Path("runs") / preset)
    try:
        run(
            cfg,
            out,
            resume=resume,
            progress=not no_progress and sys.stderr.isatty(),
            oracle_workers=oracle_workers,
        )
    except USER_ERRORS as exc:
        raise CLIError(str(exc)) from None
    finally:
        main = distributed.is_main()
        distributed.destroy()
    if main:
        click.echo(f"\nrun directory: {out} (results.md, metrics.jsonl, plots/)")


@cli.command("eval")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def eval_cmd(run_dir, as_json):
    """Show the per-stage metrics of RUN_DIR (finished stages)."""
    from genneg.engine.results import results_table
    from genneg.engine.rundir import RunDir

    rd = RunDir(run_dir, quiet=True, write=False)
    rows = rd.read_evals()
    if not rows:
        raise CLIError(f"{run_dir} has no evaluated stage yet")
    ordered = list(rows.values())
    if as_json:
        click.echo(json.dumps(ordered, indent=1))
        return
    cats = sorted({c for r in ordered for c in r.get("categories", {})})
    click.echo(results_table(ordered, categories=cats))
    diags = [e for e in rd.read_metrics("classifier") if e["stage"] in rows]
    if diags:
        from genneg.diagnostics import diagnostics_table

        click.echo("\nclassifiers on their held-out synthetic data, by noise level:\n")
        click.echo(diagnostics_table(diags))
    stopped = rd.state().get("stopped")
    if stopped:
        click.echo(f"\nthe loop stopped early: {stopped}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json):
    """List installed plugins, their versions and what each registers."""
    info = get_registry().describe()
    if as_json:
        click.echo(json.dumps(info, indent=1))
        return
    for name, rec in info.items():
        click.echo(f"{name} {rec.get('version', '?')}")
        if "error" in rec:
            click.echo(f"  FAILED TO LOAD: {rec['error']}")
        for kind, names in sorted(rec.get("registers", {}).items()):
            click.echo(f"  {kind}: {', '.join(sorted(names))}")


@cli.command("presets")
def presets_cmd():
    """List the experiment presets of installed plugins."""
    registry = get_registry()
    for name in registry.names("presets"):
        entry = registry.entries["presets"][name]
        doc = (entry.obj.__doc__ or "").strip().splitlines()
        click.echo(f"{name:32s} [{entry.plugin}] {doc[0] if doc else ''}")


def main(argv=None):
    """Entry point of the ``genneg`` command."""
    cli.main(args=argv, prog_name="genneg")


if __name__ == "__main__":
    main()
