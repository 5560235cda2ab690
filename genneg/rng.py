"""Random draws from a generator on whatever device it lives, moved to the target device.

genneg's generators are CPU generators (seeded per stage, see the runner); drawing on the
generator's device and moving the result keeps a run's noise identical on CPU and GPU, and
avoids the error torch raises for a CPU generator with a CUDA ``device=``.
"""

from __future__ import annotations

import hashlib

import torch


def stage_generator(seed: int, stage: str, purpose: str) -> torch.Generator:
    """The seeding policy of a run: a CPU generator for one purpose of one stage, seeded from
    the run seed, the stage's name and the purpose, so it is independent of what ran before it
    (a resumed run draws the same numbers as an uninterrupted one)."""
    digest = hashlib.sha256(f"{seed}/{stage}/{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _source(generator, device):
    return generator.device if generator is not None else device


def randn(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    out = torch.randn(shape, generator=generator, device=_source(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def rand(shape, generator=None, device=None, dtype=None) -> torch.Tensor:
    out = torch.rand(shape, generator=generator, device=_source(generator, device), dtype=dtype)
    return out.to(device) if device is not None else out


def randint(high: int, shape, generator=None, device=None) -> torch.Tensor:
    out = torch.randint(0, high, shape, generator=generator, device=_source(generator, device))
    return out.to(device) if device is not None else out


def randperm(n: int, generator=None, device=None) -> torch.Tensor:
    out = torch.randperm(n, generator=generator, device=_source(generator, device))
    return out.to(device) if device is not None else out
