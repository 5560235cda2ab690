"""genneg's own components and commands, registered through the same hooks as any external
plugin (as pytest's built-in plugins are)."""

from __future__ import annotations

from genneg.diffusion.samplers import BUILTIN_SAMPLERS
from genneg.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    for name, fn in BUILTIN_SAMPLERS.items():
        register(name, fn)


@hookimpl
def register_distillers(register):
    from genneg.engine.distill import score_matching_distill

    register("score-matching", score_matching_distill)


@hookimpl
def register_commands(register):
    from genneg.commands.bench import bench_cmd
    from genneg.commands.sample import sample_cmd

    register(bench_cmd)
    register(sample_cmd)
