"""Evaluation of one stage: infraction rates (with standard errors), ELBO, sampling cost, and
the stage's sample plot; written to the run directory."""

from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from genneg import diagnostics, distributed
from genneg.components import DataSplit, OracleResult
from genneg.diffusion.shapes import real_dims
from genneg.elbo import ddpm_elbo, edm_elbo
from genneg.engine.labelling import Labelled
from genneg.engine.rundir import atomic_path
from genneg.engine.sampling import CountingDenoiser
from genneg.rng import stage_generator


def evaluate_stage(exp, stage: str, model, rd, *, progress: bool = False) -> dict:
    """Sample ``cfg.eval.n_samples`` from ``model``, label them, estimate its ELBO on held-out
    points (the same points and noise for every stage of a run), record the row in ``rd``'s
    metrics and log, plot the samples; returns the row."""
    cfg = exp.cfg
    rd.log(
        f"{stage}: evaluating ({cfg.eval.n_samples} samples, ELBO on "
        f"{cfg.eval.elbo_points} {cfg.eval.elbo_split} points)"
    )
    counting = CountingDenoiser(model)
    gen = stage_generator(cfg.seed, stage, "eval-samples")
    lo, hi = distributed.share(cfg.eval.n_samples)  # this rank's share (all of them in one)
    t0 = time.perf_counter()
    samples = None
    if hi > lo:
        samples = exp.sample(counting, hi - lo, distributed.rank_generator(gen), progress=progress)
    seconds = time.perf_counter() - t0
    labelled = exp.label(samples) if samples is not None else None
    evals = counting.sample_evals
    if distributed.is_distributed():
        labelled = gather_labelled(labelled, exp.oracle.categories)
        evals = distributed.all_reduce_sum([evals])[0]
        seconds = distributed.all_reduce_sum([seconds], op="max")[0]
    metrics = infraction_metrics(exp.oracle, labelled)
    n = metrics["n"]
    split = getattr(exp.splits, cfg.eval.elbo_split)
    elbo = elbo_metrics(
        model,
        split,
        exp.process,
        k=cfg.eval.elbo_k,
        points=cfg.eval.elbo_points,
        kind=cfg.eval.elbo,
        generator=stage_generator(cfg.seed, "eval", "elbo"),
        progress=progress,
        return_values=True,
    )
    values = elbo.pop("values")
    row = {
        "stage": stage,
        **metrics,
        **elbo,
        "nfe_per_sample": evals / n,
        "seconds_per_sample": seconds / n,
        "n_classifiers": len(getattr(model, "classifiers", ())),
    }
    # paired ELBO difference to the baseline and the -log(alpha) bound (rank 0 keeps the
    # per-point values in the run directory; every rank returns the same row)
    extra = None
    if distributed.is_main():
        part = split.index(torch.arange(len(values)))  # the ELBO's points
        dims = 1.0 / float((1.0 / real_dims(part.x, part.cond).double()).mean())
        extra = diagnostics.elbo_vs_baseline(rd, stage, values, dims)
    row.update(distributed.broadcast_object(extra))
    rd.metric("eval", **row)
    rd.log(
        f"{stage}: infraction {row['infraction']:.2f} ± {row['infraction_se']:.2f} %,"
        f" {row['elbo_kind']} {row['elbo']:.4f} ± {row['elbo_se']:.4f} nats/dim"
    )
    if distributed.is_main():
        plot_samples(exp, labelled, rd.path / "plots" / f"samples_{stage}.png", stage)
    return row


def plot_samples(exp, labelled: Labelled, path, stage: str) -> None:
    """The dataset's picture of the first ``cfg.eval.plot_samples`` finite samples (see
    :meth:`genneg.Dataset.plot_samples`; datasets without one draw nothing)."""
    result = labelled.result
    if result is None:
        return
    n = min(exp.cfg.eval.plot_samples, len(labelled.samples))
    part = labelled.samples.index(torch.arange(n))
    sub = OracleResult(
        valid=result.valid[:n],
        categories={k: v[:n] for k, v in result.categories.items()},
        element_valid=None if result.element_valid is None else result.element_valid[:n],
    )
    with atomic_path(path) as tmp:
        exp.dataset.plot_samples(part, sub, str(tmp), f"{exp.cfg.name}: {stage}")


def data_ceiling(exp) -> float | None:
    """The true data's mean log-density (nats/dim) on the ELBO's points, where the dataset
    knows it: the ceiling the ELBO is measured against."""
    split = getattr(exp.splits, exp.cfg.eval.elbo_split)
    n = min(exp.cfg.eval.elbo_points, len(split))
    part = split.index(torch.arange(n)).to("cpu")
    logp = exp.dataset.log_density(part.x)
    if logp is None:
        return None
    return float((logp / real_dims(part.x, part.cond)).mean())


def rate(count: int, n: int) -> tuple[float, float]:
    """A proportion and its binomial standard error, in percent."""
    if n == 0:
        return float("nan"), float("nan")
    p = count / n
    return 100 * p, 100 * math.sqrt(p * (1 - p) / n)


def infraction_metrics(oracle, labelled: Labelled) -> dict:
    """Infraction % (+- s.e.) overall, per category and per element of a labelled batch;
    non-finite samples count as infractions in their own category ``non-finite``."""
    finite, part, result = labelled.finite, labelled.samples, labelled.result
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
    return out


def gather_labelled(labelled: Labelled | None, categories) -> Labelled:
    """Every rank's labelled batch (``None`` on a rank that drew nothing), concatenated in rank
    order on every rank."""
    finite, part, result = (
        (labelled.finite, labelled.samples, labelled.result) if labelled else (None, None, None)
    )
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
        return Labelled(finite=finite, samples=part, result=None)
    result = OracleResult(valid=valid, categories=cats, element_valid=ev)
    return Labelled(finite=finite, samples=part, result=result)


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
