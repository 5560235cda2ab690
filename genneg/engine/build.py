"""Building components named in a config from the plugin registry."""

from __future__ import annotations

import inspect

from genneg import components
from genneg.diffusion.edm import EDMConfig, EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.guidance import TimeClassifier


class BuildError(ValueError):
    """A component could not be built from its config entry."""


def make_process(spec):
    """The noise process of a :class:`genneg.config.ProcessSpec`."""
    cls, cfg_cls = (EDMProcess, EDMConfig) if spec.kind == "edm" else (VPProcess, VPConfig)
    try:
        return cls(cfg_cls(**spec.options))
    except (TypeError, ValueError) as exc:
        raise BuildError(f"process ({spec.kind}) options: {exc}") from None


def _wants(factory, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _call_factory(registry, kind: str, spec, where: str, **context):
    """``factory(**options)``, plus each ``context`` keyword the factory declares."""
    factory = registry.get(kind, spec.name)
    extra = {k: v for k, v in context.items() if k not in spec.options and _wants(factory, k)}
    try:
        inspect.signature(factory).bind(**spec.options, **extra)
    except TypeError as exc:
        raise BuildError(f"{where}: {spec.name!r} does not accept these options: {exc}") from None
    except ValueError:  # no signature available (builtins): let the call itself complain
        pass
    try:
        return factory(**spec.options, **extra)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"{where}: building {spec.name!r} failed: {exc}") from exc


def make_oracle(registry, spec, dataset=None):
    """Build the oracle; a factory with a ``dataset`` parameter receives the run's (loaded)
    dataset, so an oracle can read what the dataset built (e.g. map polygons)."""
    oracle = _call_factory(registry, "oracles", spec, "oracle", dataset=dataset)
    components.check_oracle(oracle)
    return oracle


def make_dataset(registry, spec):
    dataset = _call_factory(registry, "datasets", spec, "dataset")
    components.check_dataset(dataset)
    return dataset


def make_denoiser(registry, spec, process):
    network = _call_factory(registry, "denoisers", spec, "denoiser")
    components.check_network(network)
    return process.precondition(network)


def make_classifier(registry, spec, process) -> TimeClassifier:
    network = _call_factory(registry, "classifiers", spec, "classifier.network")
    components.check_classifier(network)
    return TimeClassifier(network, process)
