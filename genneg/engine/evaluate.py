"""Metrics of one stage: infraction rates (with standard errors), ELBO and sampling cost."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from genneg import distributed
from genneg.components import DataSplit, OracleResult
from genneg.diffusion.loss import real_dims
from genneg.elbo import ddpm_elbo, edm_elbo
from genneg.engine.synth import label_batch


def rate(count: int, n: int) -> tuple[float, float]:
    """A proportion and its binomial standard error, in percent."""
    if n == 0:
        return float("nan"), float("nan")
    p = count / n
    return 100 * p, 100 * math.sqrt(p * (1 - p) / n)


def infraction_metrics(oracle, oracle_name, samples, labelled=None):
    """Infraction % (+- s.e.) overall, per category and per element; non-finite samples count
    as infractions in their own category ``non-finite``. ``labelled``: the
    ``(finite, part, result)`` of ``samples`` if they were labelled already (``samples`` may
    then be ``None``)."""
    finite, part, result = labelled or label_batch(oracle, oracle_name, samples)
    n = len(finite)
    n_bad = int((~finite).sum())
    n_invalid = n_bad + (0 if result is None else int((~result.valid).sum()))
    out = {"n": n}
    out["infraction"], out["infraction_se"] = rate(n_invalid, n)
    cats = {}
    for cat in oracle.categories:
        flags = result.categories.get(cat) if result is not None else None
        count = 0 if flags is None else int(flags.sum())
        cats[cat] = rate(count, n)
    if n_bad:
        cats["non-finite"] = rate(n_bad, n)
    out["categories"] = {k: {"rate": r, "se": s} for k, (r, s) in cats.items()}
    if result is not None and result.element_valid is not None:
        ev = result.element_valid
        mask = part.cond.get("mask")
        real = mask if mask is not None else torch.ones_like(ev)
        bad = int((~ev & real).sum())
        out["element_infraction"], out["element_infraction_se"] = rate(bad, int(real.sum()))
    return out, finite, part, result


def gather_labelled(labelled, categories):
    """Every rank's ``(finite, part, result)`` (``labelled`` may be ``None`` on a rank that
    drew nothing), concatenated in rank order on every rank."""
    finite, part, result = labelled if labelled is not None else (None, None, None)
    k = 0 if result is None else len(result.valid)
    finite = distributed.all_gather_tensor(
        finite if finite is not None else torch.zeros(0, dtype=torch.bool)
    )
    empty = DataSplit(x=torch.zeros(0))
    part = distributed.all_gather_split(part if part is not None else empty)
    none = torch.zeros(0, dtype=torch.bool)
    valid = distributed.all_gather_tensor(result.valid if result is not None else none)
    cats = {}
    for cat in categories:
        flags = None if result is None else result.categories.get(cat)
        has = distributed.all_reduce_sum([int(flags is not None)])[0]
        if has:
            fill = torch.zeros(k, dtype=torch.bool)
            cats[cat] = distributed.all_gather_tensor(flags if flags is not None else fill)
    ev = None if result is None else result.element_valid
    if distributed.all_reduce_sum([int(ev is not None)])[0]:
        ev = distributed.all_gather_tensor(ev if ev is not None else none)
    if len(valid) == 0:
        return finite, part, None
    return finite, part, OracleResult(valid=valid, categories=cats, element_valid=ev)


def elbo_metrics(
    denoiser,
    split,
    process,
    *,
    k,
    points,
    kind,
    generator,
    batch_size=500,
    progress=False,
    return_values=False,
):
    """Mean ELBO (or r-ELBO) per dimension on the first ``points`` rows of ``split``, +- s.e.
    (``return_values``: also the per-point values, key ``values``, for paired comparisons).

    Under torch.distributed each rank takes a contiguous share of the points, with its own
    generator (:func:`genneg.distributed.rank_generator`), and the values are gathered."""
    n = min(points, len(split))
    lo, hi = distributed.share(n)
    if distributed.is_distributed():
        generator = distributed.rank_generator(generator)
        progress = progress and distributed.is_main()
    values = []
    starts = range(lo, hi, batch_size)
    for start in tqdm(starts, desc="ELBO", disable=not progress, leave=False):
        part = split.index(torch.arange(start, min(start + batch_size, hi)))
        if process.kind == "edm":
            e = edm_elbo(denoiser, part.x, part.cond, process, k=k, generator=generator)
        else:
            e = ddpm_elbo(
                denoiser,
                part.x,
                part.cond,
                process,
                k=k,
                generator=generator,
                reweighted=(kind == "r-elbo"),
            )
        values.append(e / real_dims(part.x, part.cond))
    v = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
    if distributed.is_distributed():
        v = distributed.all_gather_tensor(v.cpu())
    se = float(v.std(unbiased=True) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    out = {"elbo": float(v.mean()), "elbo_se": se, "elbo_kind": kind, "elbo_points": n}
    if return_values:
        out["values"] = v
    return out
