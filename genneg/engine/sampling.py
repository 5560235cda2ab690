"""Drawing samples from a model in batches, with the conditions resampled from the data."""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from genneg import rng
from genneg.components import DataSplit
from genneg.precision import at_precision, resolve_precision


class CountingDenoiser(torch.nn.Module):
    """Counts calls and evaluated samples (network function evaluations, NFE)."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser
        self.calls = 0
        self.sample_evals = 0

    def forward(self, x, sigma, **cond):
        self.calls += 1
        self.sample_evals += x.shape[0]
        return self.denoiser(x, sigma, **cond)


def resample_conditions(split: DataSplit, n: int, generator) -> tuple[dict, tuple]:
    """Conditions of ``n`` random rows of ``split`` (with replacement) and the sample shape."""
    idx = rng.randint(len(split), (n,), generator)
    return {k: v[idx] for k, v in split.cond.items()}, tuple(split.x.shape[1:])


class ModelSampler:
    """Samples from a denoiser with a registered sampler, conditions drawn from the data split
    ``conditions`` (the training split, or the one ``EvalConfig.condition_split`` names),
    the denoiser evaluated in ``precision`` (:mod:`genneg.precision`; ``auto`` is resolved for
    the conditions' device)."""

    def __init__(
        self,
        sampler_fn,
        process,
        steps: int,
        options: dict,
        conditions: DataSplit,
        batch_size: int,
        precision: str = "fp32",
    ):
        self.sampler_fn = sampler_fn
        self.process = process
        self.sigmas = process.sampling_sigmas(steps or None)  # 0: the process' default
        self.options = dict(options)
        self.conditions = conditions
        self.batch_size = batch_size
        #: ``fp32``, ``tf32`` or ``bf16`` (:mod:`genneg.precision`; ``auto`` resolved)
        self.precision = resolve_precision(precision, conditions.x.device)
        self.seconds = 0.0

    def sample(self, denoiser, n: int, generator, progress: bool = False) -> DataSplit:
        """``n`` samples (in batches) with the conditions they were drawn under."""
        xs, conds = [], []
        denoiser = at_precision(denoiser, self.precision)
        starts = range(0, n, self.batch_size)
        for start in tqdm(starts, desc="sampling", disable=not progress, leave=False):
            b = min(self.batch_size, n - start)
            cond, shape = resample_conditions(self.conditions, b, generator)
            x = self.process.sample_prior((b, *shape), generator, device=self.conditions.x.device)
            t0 = time.perf_counter()
            x = self.sampler_fn(
                denoiser, x, self.sigmas, cond=cond, generator=generator, **self.options
            )
            self.seconds += time.perf_counter() - t0
            xs.append(x)
            conds.append(cond)
        cond = {k: torch.cat([c[k] for c in conds]) for k in conds[0]} if conds else {}
        return DataSplit(x=torch.cat(xs), cond=cond)
