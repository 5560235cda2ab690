"""Where a run's time goes against what the machine can do: every kind of step of a preset's
run (baseline, classifier and distillation training steps, guided evaluations) timed at the
preset's own batch sizes, its FLOPs counted, and both compared with the machine's matmul rate
at the network's own layer shape (issue 13: how far below its wall time a run can go on this
machine without doing less arithmetic).

The projection multiplies each step's time by the number of such steps the preset takes
(``baseline.steps``, ``classifier.train.steps`` per iteration, ``distill.train.steps``) and
the arithmetic by the same counts; ``floor_seconds`` is that arithmetic at the layer-shape
matmul rate, i.e. every FLOP of the run done as fast as one well-shaped product of the
network's width. The synthetic sets and evaluations depend on the infraction rates of the
trained models, so they enter only through the measured ``guided-eval`` rows (per evaluation).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from genneg.bench.domain import Domain, adam_step, random_labels
from genneg.bench.timing import sync, timed
from genneg.diffusion.shapes import broadcast
from genneg.guidance import GuidedDenoiser
from genneg.losses import ClassifierLoss, DenoisingLoss, DistillationLoss


def layer_matmul_flops(batch: int, width: int, repeat: int = 20, device="cpu") -> float:
    """The machine's float32 rate (FLOP/s) for ``[batch, width] @ [width, width] + bias``,
    the shape of a hidden layer of an MLP of that width, at the current thread count."""
    a = torch.randn(batch, width, device=device)
    w = torch.randn(width, width, device=device)
    b = torch.randn(width, device=device)
    seconds = timed(lambda: torch.addmm(b, a, w), repeat=repeat, warmup=3, device=device)
    return 2.0 * batch * width * width / seconds


class _FlopCount(TorchDispatchMode):
    """Sums torch's own FLOP formulas (``torch.utils.flop_counter``) over every operator
    dispatched, forward and backward. FlopCounterMode itself tracks modules with hooks that
    ``torch.autograd.grad`` (the guidance term) does not support."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def _counted(fn) -> float:
    """FLOPs of one call of ``fn()``, its backward passes included."""
    with _FlopCount() as counter:
        fn()
    return float(counter.flops)


def _training(dom: Domain, cfg) -> dict:
    """name -> (step function, steps in the run, batch) for the run's three kinds of
    training."""
    gen = dom.gen

    def batch(size: int):
        return dom.batch(min(size, len(dom.train))).to(dom.device)

    base = dom.exp.new_denoiser().train()
    b = batch(cfg.baseline.batch_size)
    den_loss = DenoisingLoss(dom.process)
    steps = {
        "baseline-train": (
            adam_step(base, lambda: den_loss(base, b.x, b.cond, gen)),
            cfg.baseline.steps,
            len(b),
        )
    }

    clf = dom.exp.new_classifier().train()
    c = batch(cfg.classifier.train.batch_size)
    labels, el = random_labels(dom, clf, c)
    clf_loss = ClassifierLoss(dom.process, alpha=0.5, weighting=cfg.classifier.weighting)
    steps["classifier-train"] = (
        adam_step(clf, lambda: clf_loss(clf, c.x, c.cond, labels, el, gen)),
        cfg.classifier.train.steps * cfg.iterations,
        len(c),
    )

    if cfg.distill.enabled and cfg.iterations:
        classifiers = [dom.classifier() for _ in range(cfg.iterations)]
        teacher = GuidedDenoiser(
            dom.denoiser(), classifiers, cfg.classifier.guidance_scale or 1.0
        ).requires_grad_(False)
        student = dom.exp.new_denoiser().train()
        d = batch(cfg.distill.train.batch_size)
        dl = DistillationLoss(dom.process, sigma=cfg.distill.options.get("sigma", "training"))
        steps["distill-train"] = (
            adam_step(student, lambda: dl(student, teacher, d.x, d.cond, gen)),
            cfg.distill.train.steps,
            len(d),
        )
    return steps


def _guided_evals(dom: Domain, cfg) -> dict:
    """name -> (evaluation of the guided denoiser with 0..iterations classifiers at the
    sampler's batch and one noise level (a sampler step), 0 run steps, batch)."""
    n = min(cfg.sampling.batch_size, len(dom.train))
    b = dom.batch(n).to(dom.device)
    sigmas = dom.process.sampling_sigmas(cfg.sampling.steps or None)
    sigma = torch.full((n,), float(sigmas[len(sigmas) // 2]), device=dom.device)
    x = b.x + broadcast(sigma, b.x) * torch.randn_like(b.x)
    classifiers = [dom.classifier() for _ in range(cfg.iterations)]
    out = {}
    for k in range(cfg.iterations + 1):
        model = GuidedDenoiser(dom.denoiser(), classifiers[:k], 1.0) if k else dom.denoiser()
        out[f"guided-eval-{k}"] = (lambda model=model: model(x, sigma, **b.cond), 0, n)
    return out


def bench_roofline(preset: str, cfg, registry, report, *, device="cpu", repeat: int = 20):
    """Rows ``roofline`` (one per kind of step) and ``roofline-run`` (the projection of the
    preset's training to its step counts). The reference product's width is the widest
    linear layer of the denoiser (``hidden`` for the residual MLP)."""
    dom = Domain(preset, cfg, registry, device=device)
    linears = [m for m in dom.denoiser().modules() if isinstance(m, torch.nn.Linear)]
    width = max((m.out_features for m in linears), default=128)
    work = {**_training(dom, cfg), **_guided_evals(dom, cfg)}
    total_s = total_flops = floor_s = 0.0
    rows = []
    for name, (fn, count, batch) in work.items():
        flops = _counted(fn)
        seconds = timed(fn, repeat=repeat, warmup=2, device=dom.device)
        rate = layer_matmul_flops(batch, width, device=dom.device)
        row = report.add(
            "roofline",
            preset=preset,
            step=name,
            batch=batch,
            seconds=seconds,
            flops=flops,
            achieved_flops=flops / seconds,
            layer_matmul_flops=rate,
            fraction_of_layer_matmul=flops / seconds / rate,
            run_steps=count,
        )
        rows.append(row)
        if count:
            total_s += count * seconds
            total_flops += count * flops
            floor_s += count * flops / rate
    sync(dom.device)
    report.add(
        "roofline-run",
        preset=preset,
        training_seconds=total_s,
        training_flops=total_flops,
        floor_seconds=floor_s,
        floor_vs_measured=floor_s / total_s if total_s else None,
    )
    return rows
