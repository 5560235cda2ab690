"""Component benchmarks of one preset: oracle, samplers (baseline, stacked, distilled),
training steps, memory and FLOPs, all built from the preset's config."""

from __future__ import annotations

import time

import attrs
import torch
from torch.utils.flop_counter import FlopCounterMode

from genneg import rng
from genneg.bench.timing import peak_memory, sync, timed, timed_side_by_side
from genneg.components import DataSplit
from genneg.engine.sampling import CountingDenoiser, resample_conditions
from genneg.experiment import Experiment
from genneg.guidance import GuidedDenoiser
from genneg.losses import ClassifierLoss, DenoisingLoss
from genneg.precision import AtPrecision, native_bf16
from genneg.stacking import stacked_log_prob


@attrs.frozen(kw_only=True)
class DomainSizes:
    """How much work each measurement does (small: the whole suite fits in minutes)."""

    oracle_batch: int = 512
    naive_batch: int = 64
    sample_batch: int = 64
    sample_steps: int = 8
    stacks: tuple[int, ...] = (1, 2, 4)
    train_batch: int = 64
    train_steps: int = 5
    repeat: int = 3
    sampler_rounds: int = 5  # rounds of the side-by-side sampler timing


class Domain:
    """The components of one preset (its :class:`genneg.Experiment`), built once and shared
    by the measurements."""

    def __init__(self, preset: str, cfg, registry, device="cpu", seed: int = 0):
        self.preset, self.cfg, self.registry = preset, cfg, registry
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        self.exp = Experiment.from_config(cfg, registry=registry, device=device)
        self.load_seconds = time.perf_counter() - t0  # building the parts, the data's load
        self.process, self.oracle = self.exp.process, self.exp.oracle
        self.sampler_fn = registry.get("samplers", cfg.sampling.sampler)
        self.train = self.exp.splits.train

    def denoiser(self):
        return self.exp.new_denoiser().eval().requires_grad_(False)

    def classifier(self):
        return self.exp.new_classifier().eval().requires_grad_(False)

    def batch(self, n: int) -> DataSplit:
        idx = rng.randint(len(self.train), (n,), self.gen)
        return self.train.index(idx)

    def elements(self, split: DataSplit) -> float:
        """Mean number of real elements per sample (agents, frames), or 1."""
        mask = split.cond.get("mask")
        return float(mask.sum(1).float().mean()) if mask is not None else 1.0


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench_oracle(dom: Domain, report, sizes: DomainSizes) -> dict:
    """Vectorised labelling of a batch of training rows against a per-sample Python loop."""
    batch = dom.batch(sizes.oracle_batch)
    naive = batch.index(torch.arange(min(sizes.naive_batch, len(batch))))
    oracle = dom.oracle
    t_vec = timed(lambda: oracle.label(batch.x, batch.cond), repeat=sizes.repeat)

    def loop():
        for i in range(len(naive)):
            row = naive.index(torch.tensor([i]))
            oracle.label(row.x, row.cond)

    t_naive = timed(loop, repeat=1, warmup=0)
    per_elem = dom.elements(batch)
    vec_rate = len(batch) / t_vec
    naive_rate = len(naive) / t_naive
    valid = float(oracle.label(batch.x, batch.cond).valid.float().mean())
    return report.add(
        "oracle",
        preset=dom.preset,
        oracle=dom.cfg.oracle.name,
        batch=len(batch),
        samples_per_s=vec_rate,
        elements_per_sample=per_elem,
        elements_per_s=vec_rate * per_elem,
        naive_samples_per_s=naive_rate,
        vectorised_speedup=vec_rate / naive_rate,
        seconds_per_sample=t_vec / len(batch),
        data_valid_fraction=valid,
    )


def _flops_per_sample(model, x, sigma, cond) -> float:
    """FLOPs of one evaluation per sample. A guided model's gradient is counted through
    ``backward()``: FlopCounterMode's module tracking does not support ``autograd.grad``. A
    model at another precision (:class:`AtPrecision`) counts as the model it wraps."""
    if isinstance(model, AtPrecision):
        return _flops_per_sample(model.model, x, sigma, cond)
    if isinstance(model, GuidedDenoiser):
        base = _flops_per_sample(model.base, x, sigma, cond)
        if not len(model.classifiers):
            return base
        log_prob = stacked_log_prob if model.batched else GuidedDenoiser.log_prob
        with FlopCounterMode(display=False) as counter, torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            log_prob(model, xg, sigma, **cond).sum().backward()
        return base + counter.get_total_flops() / x.shape[0]
    with FlopCounterMode(display=False) as counter:
        model(x, sigma, **cond)
    return counter.get_total_flops() / x.shape[0]


def bench_sampler(dom: Domain, report, sizes: DomainSizes, peak_flops: float) -> list[dict]:
    """Sampler throughput of the baseline, 1/2/4 stacked (untrained) classifiers and a
    distilled-size student; the cost of each as a ratio to the baseline. Stacks of two or
    more are measured batched (genneg.stacking) and as the per-classifier loop
    (``stackK-loop``). Where the device multiplies bf16 natively, the baseline and the largest
    stack are also timed with their products in bf16 (``-bf16``, :mod:`genneg.precision`)."""
    base = dom.denoiser()
    classifiers = [dom.classifier() for _ in range(max(sizes.stacks, default=0))]
    scale = dom.cfg.classifier.guidance_scale or 1.0
    models = {"baseline": base}
    for k in sizes.stacks:
        models[f"stack{k}"] = GuidedDenoiser(base, classifiers[:k], scale)
    for k in sizes.stacks:
        if k > 1:
            models[f"stack{k}-loop"] = GuidedDenoiser(base, classifiers[:k], scale, batched=False)
    models["distilled"] = dom.denoiser()  # the student has the baseline's architecture
    if native_bf16(dom.device):  # sampling.precision = "bf16" / "auto" (genneg.precision)
        largest = [f"stack{max(sizes.stacks)}"] if sizes.stacks else []
        for name in ["baseline", *largest]:
            models[f"{name}-bf16"] = AtPrecision(models[name], "bf16")

    sigmas = dom.process.sampling_sigmas(sizes.sample_steps)
    n = sizes.sample_batch
    cond, shape = resample_conditions(dom.train, n, dom.gen)
    cond = {k: v.to(dom.device) for k, v in cond.items()}
    x0 = dom.process.sample_prior((n, *shape), dom.gen).to(dom.device)
    sigma_mid = torch.full((n,), float(sigmas[len(sigmas) // 2]), device=dom.device)

    draws, calls, mems = {}, {}, {}
    for name, model in models.items():
        counting = CountingDenoiser(model)

        def draw(counting=counting):
            return dom.sampler_fn(
                counting,
                x0.clone(),
                sigmas,
                cond=cond,
                generator=torch.Generator().manual_seed(1),
                **dom.cfg.sampling.options,
            )

        with peak_memory(dom.device) as mem:
            draw()  # warm-up, the number of network calls per draw and the peak memory
        draws[name], calls[name], mems[name] = draw, counting.calls, mem
    # in rounds, every model once per round: the cost ratios compare like with like
    times = timed_side_by_side(draws, repeat=sizes.sampler_rounds, device=dom.device)

    rows = []
    for name, model in models.items():
        seconds, nfe = times[name], calls[name]
        flops = _flops_per_sample(model, x0, sigma_mid, cond)
        evals_per_s = n * nfe / seconds
        rows.append(
            {
                "preset": dom.preset,
                "model": name,
                "classifiers": len(getattr(model, "classifiers", ())),
                "batched": getattr(model, "batched", True),
                "params": _params(model),
                "batch": n,
                "steps": sizes.sample_steps,
                "nfe_per_sample": nfe,
                "seconds": seconds,
                "sample_steps_per_s": n * sizes.sample_steps / seconds,
                "sample_evals_per_s": evals_per_s,
                "seconds_per_sample": seconds / n,
                "flops_per_eval": flops,
                "flops_per_sample": flops * nfe,
                "achieved_flops": flops * evals_per_s,
                "fraction_of_peak": flops * evals_per_s / peak_flops if peak_flops else None,
                **mems[name],
            }
        )
    t_base, f_base = rows[0]["seconds"], rows[0]["flops_per_eval"]
    for row in rows:
        row["cost_vs_baseline"] = row["seconds"] / t_base
        row["flops_vs_baseline"] = row["flops_per_sample"] / (f_base * rows[0]["nfe_per_sample"])
        row["throughput_vs_baseline"] = t_base / row["seconds"]
        report.add("sampler", **row)
    return rows


def random_labels(dom: Domain, classifier, batch: DataSplit):
    """Random oracle labels of ``batch`` for timing a classifier's training step: ``(scene
    labels, element labels or None)``; an element classifier's agents are valid with
    probability 0.8 (padded ones always), a scene is valid when all its agents are."""
    if classifier.granularity == "element":
        el = torch.rand(batch.x.shape[:2], generator=dom.gen) < 0.8
        mask = batch.cond.get("mask")
        el = (el | ~mask.cpu() if mask is not None else el).to(dom.device)
        return el.all(dim=1), el
    return (torch.rand(len(batch), generator=dom.gen) < 0.5).to(dom.device), None


def bench_training(dom: Domain, report, sizes: DomainSizes) -> list[dict]:
    """Seconds per Adam step of the denoiser (Eq. 5) and of a classifier (Eq. 13) on
    random labels."""
    n = min(sizes.train_batch, len(dom.train))
    batch = dom.batch(n).to(dom.device)

    den = dom.denoiser().train().requires_grad_(True)
    loss = DenoisingLoss(dom.process)

    def den_loss():
        return loss(den, batch.x, batch.cond, dom.gen)

    out = [_time_training_step(dom, report, sizes, "denoiser", den, den_loss, n)]

    clf = dom.classifier().train().requires_grad_(True)
    labels, el = random_labels(dom, clf, batch)
    pi1 = min(max(float(labels.float().mean()), 0.01), 0.99)
    loss_c = ClassifierLoss(dom.process, alpha=0.5, weighting=dom.cfg.classifier.weighting, pi1=pi1)

    def clf_loss():
        return loss_c(clf, batch.x, batch.cond, labels, el, dom.gen)

    out.append(_time_training_step(dom, report, sizes, "classifier", clf, clf_loss, n))
    out += bench_distillation(dom, report, sizes, batch)
    sync(dom.device)
    return out


def bench_distillation(dom: Domain, report, sizes: DomainSizes, batch, reuse: int = 4):
    """Seconds per distillation step (Eq. 14) of the preset's student against a stack of two
    (untrained) classifiers: a fresh teacher evaluation every step, and each target regressed
    at ``reuse`` times (``distill.target_reuse``, :mod:`genneg.engine.target_pool`), timed
    side by side over ``reuse ** 2`` steps (one fill of the pool) per round."""
    from genneg.engine.target_pool import TargetPool
    from genneg.losses import DistillationLoss
    from genneg.student import init_student

    teacher = GuidedDenoiser(dom.denoiser(), [dom.classifier(), dom.classifier()])
    loss = DistillationLoss(dom.process)
    steps, students, fns = reuse * reuse, {}, {}
    for r in (1, reuse):
        student = init_student(dom.exp.new_student(), teacher.base)
        if r == 1:  # the distiller's own path without a pool
            loss_fn = lambda s=student: loss(s, teacher, batch.x, batch.cond, dom.gen)  # noqa: E731
        else:
            draw = lambda: (batch.x, batch.cond, None)  # noqa: E731
            loss_fn = TargetPool(loss, student, teacher, draw, r, dom.gen).loss
        step = adam_step(student, loss_fn)
        students[r] = student
        fns[r] = lambda step=step: [step() for _ in range(steps)]
    for fn in fns.values():
        fn()  # warm-up
    with peak_memory(dom.device) as mem:
        best = timed_side_by_side(fns, repeat=sizes.repeat, device=dom.device)
    return [
        report.add(
            "train",
            preset=dom.preset,
            model=f"distill (target_reuse {r})",
            batch=len(batch),
            params=_params(students[r]),
            seconds_per_step=best[r] / steps,
            speedup_vs_fresh=best[1] / best[r],
            **mem,
        )
        for r in fns
    ]


def adam_step(module, loss_fn):
    """A function that takes one Adam step (lr 1e-4) of ``module`` on ``loss_fn()``."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step():
        value = loss_fn()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def _time_training_step(dom, report, sizes, model: str, module, loss_fn, n: int) -> dict:
    """Time ``sizes.train_steps`` Adam steps of ``module`` on ``loss_fn()`` and record them."""
    step = adam_step(module, loss_fn)
    with peak_memory(dom.device) as mem:
        seconds = timed(step, repeat=sizes.train_steps, device=dom.device)
    return report.add(
        "train",
        preset=dom.preset,
        model=model,
        batch=n,
        params=_params(module),
        seconds_per_step=seconds,
        **mem,
    )


def bench_domain(
    preset: str, cfg, registry, report, *, sizes=None, device="cpu", peak_flops=None
) -> None:
    """All component measurements of one preset; a failing measurement is recorded as an
    error and the others still run."""
    sizes = sizes or DomainSizes()
    with peak_memory(device) as mem:
        dom = Domain(preset, cfg, registry, device=device)
    report.add(
        "data",
        preset=preset,
        dataset=cfg.dataset.name,
        seconds=dom.load_seconds,
        train_rows=len(dom.train),
        sample_shape=list(dom.train.x.shape[1:]),
        **mem,
    )
    for name, fn in (
        ("oracle", lambda: bench_oracle(dom, report, sizes)),
        ("sampler", lambda: bench_sampler(dom, report, sizes, peak_flops)),
        ("train", lambda: bench_training(dom, report, sizes)),
    ):
        try:
            fn()
        except Exception as exc:  # one broken measurement must not end the suite
            report.error(f"{preset}/{name}", exc)
