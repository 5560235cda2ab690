"""Building the components named in a config from the plugin registry, and the run's device."""

from __future__ import annotations

import inspect

import torch

from genneg import components, distributed
from genneg.diffusion.edm import EDMConfig, EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.errors import BuildError, RunError
from genneg.guidance import DENOISED_INPUTS, TimeClassifier

__all__ = ["BuildError", "make_classifier", "make_dataset", "make_denoiser", "make_oracle"]
__all__ += ["make_process", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """The run's device; a CUDA device on a machine without one is a clear error."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise RunError(f"device {name!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(
            f"device {name!r} asked for, but torch sees no CUDA device here; "
            'pass --set device="cpu"'
        )
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    return device


def make_process(spec):
    """The noise process of a :class:`genneg.config.ProcessSpec`."""
    cls, cfg_cls = (EDMProcess, EDMConfig) if spec.kind == "edm" else (VPProcess, VPConfig)
    try:
        return cls(cfg_cls(**spec.options))
    except (TypeError, ValueError) as exc:
        raise BuildError(f"process ({spec.kind}) options: {exc}") from None


def _call_factory(registry, kind: str, spec, where: str):
    """``factory(**options)``; options the factory does not take are named."""
    factory = registry.get(kind, spec.name)
    try:
        inspect.signature(factory).bind(**spec.options)
    except TypeError as exc:
        raise BuildError(f"{where}: {spec.name!r} does not accept these options: {exc}") from None
    except ValueError:  # no signature available (builtins): let the call itself complain
        pass
    try:
        return factory(**spec.options)
    except (TypeError, ValueError) as exc:
        raise BuildError(f"{where}: building {spec.name!r} failed: {exc}") from exc


def make_oracle(registry, spec):
    oracle = _call_factory(registry, "oracles", spec, "oracle")
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


def make_classifier(registry, spec, process, input: str = "c_in", denoiser=None):
    """A :class:`TimeClassifier` (``denoiser``: the base, for the ``denoised`` input)."""
    network = _call_factory(registry, "classifiers", spec, "classifier.network")
    components.check_classifier(network)
    return TimeClassifier(network, process, input, denoiser if input in DENOISED_INPUTS else None)
