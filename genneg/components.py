"""The small contracts every registered component is checked against.

Conventions shared by all domains:

* A sample is a tensor ``x`` of shape ``[B, *event_shape]``. Domains with a variable number of
  elements (agents in a traffic scene, frames of a motion) put them on axis 1, so ``x`` is
  ``[B, N, F]``, and carry ``cond["mask"]``: a bool ``[B, N]`` tensor, True for real elements.
* ``cond`` is a dict of tensors, each with the batch on axis 0 (mask, map index, map raster,
  text embedding, ...). Being plain tensors they can be indexed, sharded, concatenated and saved
  with ``torch.save`` and re-loaded with ``weights_only=True``.
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, runtime_checkable

import attrs
import torch


@attrs.frozen(kw_only=True)
class OracleResult:
    """What an oracle says about a batch.

    :ivar valid: bool ``[B]``: True where the whole sample is allowed (``O(x) = 1``).
    :ivar categories: name -> bool ``[B]``: True where the sample commits that infraction.
    :ivar element_valid: optional bool ``[B, N]`` labels per element (agent or frame); padded
        elements (``mask`` False) are True.
    """

    valid: torch.Tensor
    categories: dict[str, torch.Tensor] = attrs.field(factory=dict)
    element_valid: torch.Tensor | None = None


class Oracle(abc.ABC):
    """Labels samples as allowed or not. Subclass it, or register any object with the same
    two members."""

    #: Names of the infraction categories this oracle reports.
    categories: tuple[str, ...] = ()

    @abc.abstractmethod
    def label(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> OracleResult:
        """Label a batch ``x`` with its conditioning ``cond``; vectorised over the batch."""


def index_cond(cond: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """The rows ``rows`` (a slice or an index tensor) of every conditioning tensor."""
    return {k: v[rows] for k, v in cond.items()}


@attrs.frozen(kw_only=True)
class DataSplit:
    """A set of samples ``x`` ``[B, ...]`` and their conditioning tensors."""

    x: torch.Tensor
    cond: dict[str, torch.Tensor] = attrs.field(factory=dict)

    def __attrs_post_init__(self):
        for key, value in self.cond.items():
            if value.shape[0] != self.x.shape[0]:
                raise ValueError(
                    f"cond[{key!r}] has {value.shape[0]} rows but x has {self.x.shape[0]}"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> DataSplit:
        """The split with ``x`` and every conditioning tensor on ``device``."""
        return DataSplit(x=self.x.to(device), cond={k: v.to(device) for k, v in self.cond.items()})

    def index(self, idx: torch.Tensor) -> DataSplit:
        """Rows ``idx`` of ``x`` and of every conditioning tensor."""
        return DataSplit(x=self.x[idx], cond=index_cond(self.cond, idx))

    @classmethod
    def cat(cls, splits: list[DataSplit]) -> DataSplit:
        """The rows of ``splits``, in order (the conditions of the first split's keys)."""
        return cls(
            x=torch.cat([s.x for s in splits]),
            cond={k: torch.cat([s.cond[k] for s in splits]) for k in splits[0].cond},
        )


@attrs.frozen(kw_only=True)
class Splits:
    """Train, validation and test splits of a dataset."""

    train: DataSplit
    val: DataSplit
    test: DataSplit


class Dataset(abc.ABC):
    """A source of training and held-out data for one domain."""

    @abc.abstractmethod
    def load(self, root: str, generator: torch.Generator) -> Splits:
        """Build or load the splits; ``root`` is a cache directory the dataset may use."""

    def log_density(self, x: torch.Tensor) -> torch.Tensor | None:
        """Exact log-density of the true data at ``x`` (nats), where known; else ``None``."""
        return None

    def plot_samples(self, samples: DataSplit, result: OracleResult, path: str, title: str):
        """Draw ``samples`` (infracting ones marked, from the oracle's ``result``) into the
        image file ``path``; the run calls it for every stage (``plots/samples_<stage>.png``).
        The default draws nothing: a domain overrides it with its own picture (a scatter of
        points, a traffic scene, a skeleton)."""
        return None


@runtime_checkable
class NoiseProcess(Protocol):
    """The noise process contract, which :class:`genneg.diffusion.edm.EDMProcess` and
    :class:`genneg.diffusion.vp.VPProcess` satisfy (``tests/test_processes.py`` checks both).

    Coordinates are EDM's: ``x = x0 + sigma * eps``; a DDPM is the same in scaled coordinates.
    Tensors of noise levels are ``[B]``.

    * ``kind``: ``"edm"`` or ``"vp"``; ``sigma_min``, ``sigma_max``: the levels sampling spans.
    * ``c_in(sigma)``, ``c_noise(sigma)``: the network's input scaling and noise conditioning.
    * ``precondition(network)``: the denoiser ``D(x, sigma, **cond)`` around a raw network.
    * ``sample_training_sigma(n, generator, device)``, ``loss_weight(sigma)``: Eq. (5)'s noise
      levels and weighting; ``sample_classifier_sigma(n, generator, device)``: Eq. (13)'s.
    * ``sampling_sigmas(steps=None, device=None)``: the sampler's descending levels followed by
      0; ``steps=None`` (``sampling.steps = 0`` in a config) is the process' default.
    * ``sample_prior(shape, generator, device)``, ``prior_std()``: where sampling starts.
    """

    kind: str
    sigma_min: float
    sigma_max: float

    def c_in(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def c_noise(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def precondition(self, network: torch.nn.Module) -> torch.nn.Module: ...

    def sample_training_sigma(self, n: int, generator=None, device=None) -> torch.Tensor: ...

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def sample_classifier_sigma(self, n: int, generator=None, device=None) -> torch.Tensor: ...

    def sampling_sigmas(self, steps: int | None = None, device=None) -> torch.Tensor: ...

    def sample_prior(self, shape, generator=None, device=None) -> torch.Tensor: ...

    def prior_std(self) -> float: ...


class DenoiserNetwork(Protocol):
    """The denoiser network contract (a protocol: no need to inherit from it).

    ``forward(x_in, c_noise, **cond)`` takes the preconditioned input ``x_in`` (same shape as a
    sample), the noise conditioning ``c_noise`` (``[B]``; ``ln(sigma)/4`` for EDM, the DDPM step
    index ``t`` for VP) and the conditioning tensors, and returns a tensor shaped like ``x_in``.
    """


class ClassifierNetwork(Protocol):
    """The classifier network contract (a protocol: no need to inherit from it).

    ``granularity`` is ``"sample"`` (logits ``[B]``) or ``"element"`` (logits ``[B, N]``, one
    per agent or frame; ``log C(x) = sum over real elements of log sigmoid(logit)``).
    ``forward(x_in, c_noise, **cond)`` as for :class:`DenoiserNetwork`.
    """


GRANULARITIES = ("sample", "element")


def check_oracle(obj: Any) -> None:
    """Raise ``TypeError`` unless ``obj`` satisfies the oracle contract."""
    if not callable(getattr(obj, "label", None)):
        raise TypeError(f"{obj!r} has no callable label(x, cond)")
    cats = getattr(obj, "categories", None)
    if not isinstance(cats, tuple) or not all(isinstance(c, str) for c in cats):
        raise TypeError(f"{obj!r}.categories must be a tuple of str, got {cats!r}")


def check_network(obj: Any) -> None:
    """Raise ``TypeError`` unless ``obj`` is a ``torch.nn.Module``."""
    if not isinstance(obj, torch.nn.Module):
        raise TypeError(f"{obj!r} is not a torch.nn.Module")


def check_classifier(obj: Any) -> None:
    """Raise ``TypeError`` unless ``obj`` satisfies the classifier network contract."""
    check_network(obj)
    if getattr(obj, "granularity", None) not in GRANULARITIES:
        raise TypeError(f"{obj!r}.granularity must be one of {GRANULARITIES}")


def check_dataset(obj: Any) -> None:
    """Raise ``TypeError`` unless ``obj`` has the :class:`Dataset` methods (subclass it to get
    the optional ones' defaults)."""
    for method in ("load", "log_density", "plot_samples"):
        if not callable(getattr(obj, method, None)):
            raise TypeError(
                f"{obj!r} has no callable {method}(); subclass genneg.Dataset, which "
                "provides defaults for log_density and plot_samples"
            )


def validate_oracle_result(result: Any, batch_size: int, categories: tuple[str, ...], name: str):
    """Check what an oracle returned; raise ``ValueError`` naming the oracle and the problem."""
    if not isinstance(result, OracleResult):
        raise ValueError(f"oracle {name!r} returned {type(result).__name__}, not OracleResult")
    valid = result.valid
    if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
        raise ValueError(f"oracle {name!r}: valid must be a bool tensor, got {_describe(valid)}")
    if valid.shape != (batch_size,):
        raise ValueError(
            f"oracle {name!r}: valid has shape {tuple(valid.shape)}, expected ({batch_size},)"
        )
    for cat, flags in result.categories.items():
        if cat not in categories:
            raise ValueError(f"oracle {name!r}: unknown category {cat!r} (declared {categories})")
        if not isinstance(flags, torch.Tensor) or flags.dtype != torch.bool:
            raise ValueError(f"oracle {name!r}: category {cat!r} is not a bool tensor")
        if flags.shape != (batch_size,):
            raise ValueError(f"oracle {name!r}: category {cat!r} has shape {tuple(flags.shape)}")
    ev = result.element_valid
    if ev is not None and (ev.dtype != torch.bool or ev.ndim != 2 or ev.shape[0] != batch_size):
        raise ValueError(f"oracle {name!r}: element_valid must be bool [B, N], got {_describe(ev)}")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
