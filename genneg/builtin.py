"""genneg's own components, registered through the same hooks as any external plugin."""

from __future__ import annotations

from genneg.diffusion.samplers import BUILTIN_SAMPLERS
from genneg.plugins import hookimpl


@hookimpl
def register_samplers(register):
    for name, fn in BUILTIN_SAMPLERS.items():
        register(name, fn)


@hookimpl
def register_distillers(register):
    from genneg.engine.distill import score_matching_distill

    register("score-matching", score_matching_distill)
