"""Measurements of one domain's small preset, built at the preset's sizes with untrained
weights (timings do not depend on training), all in one process so ratios compare like
with like."""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import attrs
import torch
from torch.utils.flop_counter import FlopCounterMode

from genneg import rng
from genneg.classifier_loss import weighted_bce
from genneg.components import DataSplit
from genneg.diffusion.loss import DenoisingLoss
from genneg.diffusion.shapes import broadcast
from genneg.engine.rundir import RunDir
from genneg.engine.sampling import CountingDenoiser, ModelSampler
from genneg.engine.synth import label_batch
from genneg.engine.train import minibatch
from genneg.guidance import GuidedDenoiser

STACKS = (1, 2, 4)


@attrs.frozen
class Budget:
    """How much each measurement may take; the defaults keep ``tox -e bench`` short."""

    batch: int = 64  # samples per sampler call
    max_steps: int = 10  # sampler steps (the preset's, if fewer)
    oracle_batch: int = 512
    naive_samples: int = 64
    min_seconds: float = 0.3  # repeat a cheap measurement until it took this long
    train_steps: int = 5


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``getrusage`` maxrss), in MiB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024**2 if sys.platform == "darwin" else rss / 1024


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, min_seconds: float, device="cpu", max_reps: int = 1000) -> float:
    """Seconds per call of ``fn`` (one warm-up call, then repeated for ``min_seconds``)."""
    fn()
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds or reps >= max_reps:
            return elapsed / reps


def matmul_flops(device="cpu", n: int = 1024, min_seconds: float = 0.5) -> float:
    """The machine's measured fp32 matmul FLOP/s (``n x n`` by ``n x n``)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    return 2 * n**3 / timed(lambda: a @ b, min_seconds, device)


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (``torch.utils.flop_counter``; matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _batch(split: DataSplit, n: int) -> DataSplit:
    return split.index(torch.arange(min(n, len(split))))


def _elements(cond: dict) -> int | None:
    mask = cond.get("mask")
    return None if mask is None else int(mask.sum())


def oracle_throughput(exp, report, budget: Budget) -> None:
    """Vectorised oracle on a batch against a naive per-sample loop."""
    batch = _batch(exp.splits.train, budget.oracle_batch).to("cpu")
    oracle = exp.oracle
    sec = timed(lambda: oracle.label(batch.x, batch.cond), budget.min_seconds)
    n = len(batch)
    report.add("oracle_samples_per_s", n / sec, "samples/s", batch=n)
    elements = _elements(batch.cond)
    if elements is not None:
        report.add("oracle_elements_per_s", elements / sec, "elements/s")
    k = min(budget.naive_samples, n)

    def naive():
        for i in range(k):
            oracle.label(batch.x[i : i + 1], {c: v[i : i + 1] for c, v in batch.cond.items()})

    naive_sec = timed(naive, budget.min_seconds, max_reps=20) / k
    report.add("oracle_naive_samples_per_s", 1 / naive_sec, "samples/s", batch=1)
    report.add("oracle_vectorised_over_naive", naive_sec / (sec / n), "x")


def _denoiser_ops(exp, b):
    split = _batch(exp.splits.train, b)
    sigma = exp.process.sampling_sigmas(10)[2].expand(len(split)).to(split.x.device)
    return split, sigma


def sampler_throughput(exp, report, budget: Budget) -> dict:
    """Samples x steps / s of the baseline, 1, 2, 4 stacked classifiers and a same-size
    distilled model; cost ratios to the baseline; FLOPs per evaluation and fraction of peak."""
    cfg = exp.cfg
    steps = min(cfg.sampling.steps or budget.max_steps, budget.max_steps)
    sampler_fn = exp.registry.get("samplers", cfg.sampling.sampler)
    ms = ModelSampler(
        sampler_fn, exp.process, steps, cfg.sampling.options, exp.splits.train, budget.batch
    )
    n_steps = len(ms.sigmas) - 1
    base = exp.base.eval().requires_grad_(False)
    classifiers = [exp.new_classifier().eval().requires_grad_(False) for _ in range(max(STACKS))]
    models = {"baseline": base}
    for k in STACKS:
        models[f"stack{k}"] = GuidedDenoiser(base, classifiers[:k], cfg.classifier.guidance_scale)
    models["distill"] = exp.new_denoiser().eval().requires_grad_(False)
    out = {"steps": n_steps, "batch": budget.batch, "models": {}}
    labelled = {}
    for name, model in models.items():
        counting = CountingDenoiser(model)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            ms.sample(counting, budget.batch, gen)  # warm-up
        counting.calls = counting.sample_evals = 0
        ms.seconds = 0.0
        with torch.no_grad():
            samples = ms.sample(counting, budget.batch, gen)
        sec = ms.seconds
        rate = budget.batch * n_steps / sec
        report.add(f"sampler_{name}_samples_steps_per_s", rate, "samples*steps/s")
        out["models"][name] = {
            "seconds": sec,
            "samples_steps_per_s": rate,
            "nfe_per_sample": counting.sample_evals / budget.batch,
            "seconds_per_sample": sec / budget.batch,
        }
        labelled[name] = samples
    t_base = out["models"]["baseline"]["seconds"]
    for name, rec in out["models"].items():
        rec["cost_ratio"] = rec["seconds"] / t_base
        report.add(f"sampler_{name}_cost_ratio", rec["cost_ratio"], "x baseline")

    # FLOPs per evaluation of one sample: the denoiser, and one classifier's guidance term.
    split, sigma = _denoiser_ops(exp, budget.batch)
    with torch.no_grad():
        f_base = count_flops(lambda: base(split.x, sigma, **split.cond)) / len(split)
    g1 = GuidedDenoiser(base, classifiers[:1], cfg.classifier.guidance_scale)
    f_clf = count_flops(lambda: g1.guidance(split.x, sigma, **split.cond)) / len(split)
    report.add("denoiser_flops_per_eval", f_base, "FLOP/sample")
    report.add("classifier_guidance_flops_per_eval", f_clf, "FLOP/sample (fwd+bwd)")
    out["flops_per_eval"] = {"denoiser": f_base, "classifier_guidance": f_clf}
    for name, rec in out["models"].items():
        k = int(name[5:]) if name.startswith("stack") else 0
        rec["flops"] = rec["nfe_per_sample"] * budget.batch * (f_base + k * f_clf)
        rec["flop_per_s"] = rec["flops"] / rec["seconds"]
    return out, labelled


def training_steps(exp, report, budget: Budget) -> None:
    """Seconds per Adam step of the denoiser and the classifier at the preset's batch sizes."""
    cfg = exp.cfg
    gen = torch.Generator().manual_seed(1)
    den = exp.new_denoiser().train()
    loss = DenoisingLoss(exp.process)
    opt = torch.optim.Adam(den.parameters(), lr=1e-4)
    train = exp.splits.train

    def den_step():
        batch = minibatch(train, cfg.baseline.batch_size, gen)
        value = loss(den, batch.x, batch.cond, gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    sec = timed(den_step, budget.min_seconds, exp.device, max_reps=budget.train_steps)
    report.add(
        "denoiser_train_step_s", sec, "s/step", batch=min(cfg.baseline.batch_size, len(train))
    )

    clf = exp.new_classifier().train()
    copt = torch.optim.Adam(clf.parameters(), lr=1e-4)
    bs = min(cfg.classifier.train.batch_size, len(train))

    def clf_step():
        batch = minibatch(train, bs, gen)
        x0, cond = batch.x, batch.cond
        labels = rng.randint(2, (len(batch),), gen).bool().to(x0.device)
        element = None
        if clf.granularity == "element":
            shape = cond["mask"].shape if "mask" in cond else x0.shape[:2]
            element = rng.randint(2, tuple(shape), gen).bool().to(x0.device)
        sigma = exp.process.sample_classifier_sigma(len(batch), gen, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, gen, x0.device)
        logits = clf(xt, sigma, **cond)
        weights = torch.ones(len(batch), device=x0.device)
        value = weighted_bce(logits, labels, weights, element_labels=element, mask=cond.get("mask"))
        copt.zero_grad(set_to_none=True)
        value.backward()
        copt.step()

    sec = timed(clf_step, budget.min_seconds, exp.device, max_reps=budget.train_steps)
    report.add("classifier_train_step_s", sec, "s/step", batch=bs)


def build_experiment(cfg, registry, device: str | None = None):
    """An :class:`Experiment` of ``cfg`` in a throw-away run directory (untrained weights)."""
    from genneg.engine.runner import Experiment

    if device is not None:
        cfg = attrs.evolve(cfg, device=device)
    rd = RunDir(tempfile.mkdtemp(prefix="genneg-bench-"), quiet=True)
    return Experiment(cfg, registry, rd, progress=False)


def bench_preset(name, registry, report, budget: Budget, *, peak_flops, device=None) -> dict:
    """All measurements of preset ``name``; returns its section of the report."""
    from genneg.bench.rejection import rejection_row

    cfg = registry.get("presets", name)()
    section = {"preset": name, "plugin": registry.entries["presets"][name].plugin}
    with report.case(f"{name}/build"):
        t0 = time.perf_counter()
        exp = build_experiment(cfg, registry, device)
        section["build_seconds"] = time.perf_counter() - t0
        section["device"] = str(exp.device)
        section["sample_shape"] = list(exp.splits.train.x.shape[1:])
        section["parameters"] = {
            "denoiser": sum(p.numel() for p in exp.base.parameters()),
            "classifier": sum(p.numel() for p in exp.new_classifier().parameters()),
        }
    with report.case(f"{name}/oracle"):
        oracle_throughput(exp, report, budget)
    with report.case(f"{name}/sampler"):
        sampling, labelled = sampler_throughput(exp, report, budget)
        section["sampling"] = sampling
        rows = []
        for stage, samples in labelled.items():
            finite, _, result = label_batch(exp.oracle, cfg.oracle.name, samples)
            n_bad = int((~finite).sum()) + (0 if result is None else int((~result.valid).sum()))
            rec = sampling["models"][stage]
            k = int(stage[5:]) if stage.startswith("stack") else 0
            rows.append(
                rejection_row(
                    stage,
                    n_bad / len(samples),
                    nfe_per_sample=rec["nfe_per_sample"],
                    seconds_per_sample=rec["seconds_per_sample"],
                    n_classifiers=k,
                )
            )
            if peak_flops:
                rec["fraction_of_peak"] = rec["flop_per_s"] / peak_flops
                report.add(f"sampler_{stage}_fraction_of_peak", rec["fraction_of_peak"], "")
        section["rejection_untrained"] = rows
    with report.case(f"{name}/train"):
        training_steps(exp, report, budget)
    section["measured"] = {
        r["name"]: r["value"] for r in report.records if r["case"].startswith(f"{name}/")
    }
    section["peak_rss_mb"] = peak_rss_mb()
    with report.case(f"{name}/memory"):
        report.add("peak_rss_mb_so_far", section["peak_rss_mb"], "MiB")
        if torch.device(exp.device).type == "cuda":
            section["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 1024**2
            report.add("cuda_peak_mb", section["cuda_peak_mb"], "MiB")
    return section
