"""genneg: oracle-assisted guidance of diffusion models (Gen-neG).

This module is genneg's public API, declared in one place (as ``llm`` does): plugins and user
code import from ``genneg`` only. Plugins implement the hooks of :mod:`genneg.hookspecs`,
marked with :data:`hookimpl`, and expose themselves through the ``genneg`` entry-point group.
"""

from genneg import (
    stacking,  # public module: helpers for stacked_forward
    threads,  # public module: thread defaults (a plugin's worker processes)
)
from genneg.components import (
    Dataset,
    DataSplit,
    NoiseProcess,
    Oracle,
    OracleResult,
    Splits,
)
from genneg.config import (
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
from genneg.engine.labelling import Labelled
from genneg.engine.rundir import RunDir, atomic_write_text, load_checkpoint
from genneg.engine.runner import run
from genneg.errors import (
    BuildError,
    CheckpointError,
    ClassTooRareError,
    ConfigError,
    DataError,
    GennegError,
    OracleError,
    RunError,
)
from genneg.experiment import Experiment
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.hookspecs import hookimpl
from genneg.losses import ClassifierLoss, DenoisingLoss, DistillationLoss
from genneg.plugins import get_registry
from genneg.rng import stage_generator

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
    "threads",
]
__version__ = "0.1.0"


def resolve_config(preset: str, files=(), assignments=(), registry=None) -> RunConfig:
    """The config of the preset named ``preset``, overridden by TOML ``files`` and then by
    ``key=value`` ``assignments`` (what ``genneg run PRESET --config F --set K=V`` runs)."""
    from genneg.config import resolve

    base = (registry or get_registry()).get("presets", preset)()
    return resolve(base, files, assignments)
