"""genneg: oracle-assisted guidance of diffusion models (Gen-neG).

This module is genneg's public API, declared in one place (as ``llm`` does): plugins and user
code import from ``genneg`` only. Plugins implement the hooks of :mod:`genneg.hookspecs`,
marked with :data:`hookimpl`, and expose themselves through the ``genneg`` entry-point group.
"""

from genneg.threads import default_wait_policy

default_wait_policy()  # before torch loads OpenMP (genneg/threads.py)

from genneg import stacking  # noqa: E402  (public module: helpers for stacked_forward)
from genneg.components import (  # noqa: E402
    Dataset,
    DataSplit,
    NoiseProcess,
    Oracle,
    OracleResult,
    Splits,
)
from genneg.config import (  # noqa: E402
    ClassifierConfig,
    ComponentSpec,
    DistillConfig,
    EvalConfig,
    ProcessSpec,
    RunConfig,
    SamplingConfig,
    SynthConfig,
    TrainConfig,
)
from genneg.engine.labelling import Labelled  # noqa: E402
from genneg.engine.rundir import RunDir, atomic_write_text, load_checkpoint  # noqa: E402
from genneg.engine.runner import run  # noqa: E402
from genneg.errors import (  # noqa: E402
    BuildError,
    CheckpointError,
    ClassTooRareError,
    ConfigError,
    DataError,
    GennegError,
    OracleError,
    RunError,
)
from genneg.experiment import Experiment  # noqa: E402
from genneg.guidance import GuidedDenoiser, TimeClassifier  # noqa: E402
from genneg.hookspecs import hookimpl  # noqa: E402
from genneg.losses import ClassifierLoss, DenoisingLoss, DistillationLoss  # noqa: E402
from genneg.plugins import get_registry  # noqa: E402
from genneg.rng import stage_generator  # noqa: E402

__all__ = [
    "BuildError",
    "CheckpointError",
    "ClassTooRareError",
    "ClassifierConfig",
    "ClassifierLoss",
    "ComponentSpec",
    "ConfigError",
    "DataError",
    "DataSplit",
    "Dataset",
    "DenoisingLoss",
    "DistillConfig",
    "DistillationLoss",
    "EvalConfig",
    "Experiment",
    "GennegError",
    "GuidedDenoiser",
    "Labelled",
    "NoiseProcess",
    "Oracle",
    "OracleError",
    "OracleResult",
    "ProcessSpec",
    "RunConfig",
    "RunDir",
    "RunError",
    "SamplingConfig",
    "Splits",
    "SynthConfig",
    "TimeClassifier",
    "TrainConfig",
    "atomic_write_text",
    "get_registry",
    "hookimpl",
    "load_checkpoint",
    "resolve_config",
    "run",
    "stacking",
    "stage_generator",
]
__version__ = "0.1.0"


def resolve_config(preset: str, files=(), assignments=(), registry=None) -> RunConfig:
    """The config of the preset named ``preset``, overridden by TOML ``files`` and then by
    ``key=value`` ``assignments`` (what ``genneg run PRESET --config F --set K=V`` runs)."""
    from genneg.config import resolve

    base = (registry or get_registry()).get("presets", preset)()
    return resolve(base, files, assignments)
