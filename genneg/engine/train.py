"""Training loops: one shared optimisation loop (Adam, warm-up, clipping, progress, loss log)
and the two trainers of Algorithm 1 built on it, the baseline DM (Eq. 5) and a guidance
classifier (Eq. 13). The losses themselves live in :mod:`genneg.losses`."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from genneg import distributed, rng, threads
from genneg.classifier_targets import check_targets
from genneg.engine.selection import SELECTIONS, HeldOutSelection
from genneg.losses import ClassifierLoss, DenoisingLoss
from genneg.precision import precision_mode, resolve_precision


def minibatch(split, batch_size: int, generator):
    """A random minibatch of a :class:`DataSplit` (or a ``LabelledSet``); the whole split when
    it is smaller (the paper's full-batch training on 1000 checkerboard points)."""
    n = len(split)
    if batch_size >= n:
        return split
    return split.index(rng.randint(n, (batch_size,), generator))


def fit(
    params,
    loss_fn,
    cfg,
    *,
    desc: str,
    progress: bool = True,
    log=None,
    sharded=False,
    on_window=None,
):
    """Minimise ``loss_fn(step)`` for ``cfg.steps`` Adam steps; returns ``[(step, loss)]``
    averaged over each ``cfg.log_every`` window. A non-finite loss stops training with an
    error naming the step.

    Under torch.distributed the parameters start from rank 0's and the gradients are
    all-reduced after each backward pass, so every rank takes the same step (as
    DistributedDataParallel does): summed when ``sharded`` (each rank's loss is its share of
    one global batch, as :mod:`genneg.losses` computes them), else averaged. Only rank 0 logs
    and shows a progress bar. In one process this is plain Adam. ``cfg.precision``: the
    forward pass under :func:`genneg.precision.precision_mode` (mixed precision for ``bf16``).
    ``on_window(step, mean_loss)``, if given, is called at the end of every ``cfg.log_every``
    window (held-out selection, :mod:`genneg.engine.selection`).
    """
    params = [p for p in params if p.requires_grad]
    multi = distributed.is_distributed()
    if multi:
        distributed.broadcast_tensors(params)
        progress = progress and distributed.is_main()
        log = log if distributed.is_main() else None
    device = params[0].device if params else torch.device("cpu")
    precision = resolve_precision(cfg.precision, device)
    opt = adam(params, cfg.lr)
    average = WeightAverage(params, cfg.ema) if cfg.ema else None
    history, window = [], []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        threads.tick()  # the free cores (genneg/threads.py)
        if cfg.lr_warmup or cfg.lr_schedule != "constant":
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
        if precision == "fp32":
            loss = loss_fn(step)
        else:  # the forward pass at the precision; backward follows its dtypes
            with precision_mode(precision, device.type):
                loss = loss_fn(step)
        if multi:  # every rank sees the global loss, so all stop together on a bad one
            opt.zero_grad(set_to_none=True)
            loss.backward()
            loss = distributed.reduce_gradients(params, loss, sharded=sharded)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}")
        if not multi:
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if average is not None:
            average.update()
        window.append(loss.item())
        if len(window) == cfg.log_every or step == cfg.steps - 1:
            mean = sum(window) / len(window)
            history.append((step + 1, mean))
            bar.set_postfix(loss=f"{mean:.4g}")
            if log is not None:
                log(f"{desc}: step {step + 1}/{cfg.steps} loss {mean:.5g}")
            if on_window is not None:
                on_window(step + 1, mean)
            window = []
    if average is not None:
        average.copy_to_params()
    return history


class WeightAverage:
    """An exponential moving average of ``params`` (``decay`` per update), started from their
    current values; :meth:`copy_to_params` writes it into them."""

    def __init__(self, params, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.params, self.decay = list(params), decay
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self):
        for a, p in zip(self.average, self.params, strict=True):
            a.lerp_(p, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self):
        for a, p in zip(self.average, self.params, strict=True):
            p.copy_(a)


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where every parameter is a float tensor on a CPU or CUDA
    device (measured on the checkerboard baseline's training step, one CPU thread: 0.87x the
    time of the per-tensor loop); otherwise the default implementation."""
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def learning_rate(cfg, step: int) -> float:
    """The learning rate of step ``step``: linear warm-up over ``cfg.lr_warmup`` steps, then
    constant or (``cfg.lr_schedule == "cosine"``) a cosine decay to 0 at ``cfg.steps``."""
    lr = cfg.lr * min(1.0, (step + 1) / cfg.lr_warmup) if cfg.lr_warmup else cfg.lr
    if cfg.lr_schedule == "cosine":
        span = max(cfg.steps - cfg.lr_warmup, 1)
        done = min(max(step - cfg.lr_warmup, 0), span)
        lr *= 0.5 * (1.0 + math.cos(math.pi * done / span))
    return lr


def train_denoiser(denoiser, data, *, process, train, generator, progress=True, log=None):
    """Fit ``denoiser`` in place on ``data`` (a :class:`DataSplit`) with Eq. (5)."""
    loss = DenoisingLoss(process)

    def loss_fn(step):
        batch = minibatch(data, train.batch_size, generator)
        return loss(denoiser, batch.x, batch.cond, generator)

    params = denoiser.parameters()
    return fit(params, loss_fn, train, desc="baseline", progress=progress, log=log, sharded=True)


def classifier_training_set(synth, weighting: str):
    """The balanced set D+ u D- (Algorithm 1), or the natural-ratio set for ``imbalanced``."""
    if weighting == "imbalanced":
        if synth.natural is None:
            raise ValueError("the imbalanced ablation needs the natural-ratio set")
        return synth.natural
    return type(synth.positives).cat([synth.positives, synth.negatives])


def train_classifier(
    classifier,
    synth,
    *,
    weighting,
    process,
    train,
    generator,
    progress=True,
    log=None,
    element_loss="per-element",
    targets="hard",
    minibatch="uniform",
    select="last",
    held=None,
    score_weight=0.0,
    model=None,
    score_on="synthetic",
    score_data=None,
):
    """Fit ``classifier`` (a :class:`genneg.guidance.TimeClassifier`) in place on a synthetic
    set (:class:`genneg.engine.synth.SynthResult`) with the importance-weighted BCE of
    Eq. (13) (or an ablation); a per-element classifier on its elements' labels or, with
    ``element_loss="joint"``, on the scene's; ``targets="posterior"``: the labels averaged
    over which training point made ``x_t`` (:mod:`genneg.classifier_targets`).

    ``minibatch="uniform"`` draws rows from the whole set; ``"balanced"`` draws half of each
    minibatch from the positives and half from the negatives, so a set with many more
    positives (``synth.keep_positive``) trains on balanced minibatches with the weights of
    ``pi1 = 1/2``: the expected loss is Eq. (13) either way.

    ``select="holdout"``: the weights that scored best on ``held`` (the synthetic set's
    held-out part, a :class:`~genneg.engine.synth.LabelledSet`) at the end of a log window are
    the classifier's at the end (:mod:`genneg.engine.selection`); ``"last"``: the last step's.

    ``score_weight > 0``: the loss also charges the guided ``model``'s denoising-loss change
    on the valid rows (:func:`genneg.losses.guided_denoising_change`); ``model`` is the
    denoiser that drew ``synth``. ``score_on`` (``synthetic``, ``data``, ``both``) places the
    term on the valid rows and/or on noised rows of ``score_data`` (the training split;
    :class:`genneg.losses.ClassifierLoss`)."""
    if select not in SELECTIONS:
        raise ValueError(f"classifier select must be one of {SELECTIONS}, got {select!r}")
    if select == "holdout" and (held is None or len(held) == 0):
        raise ValueError(
            "classifier select 'holdout' needs a held-out set (classifier.holdout > 0)"
        )
    if select == "holdout" and train.ema:
        raise ValueError(
            "classifier select 'holdout' scores the trained weights, not their average: "
            "set classifier.train.ema = 0 or select = 'last'"
        )
    if minibatch not in ("uniform", "balanced"):
        raise ValueError(f"minibatch must be 'uniform' or 'balanced', got {minibatch!r}")
    if minibatch == "balanced" and weighting == "imbalanced":
        raise ValueError("the imbalanced ablation trains on the natural label ratio, not balanced")
    data = classifier_training_set(synth, weighting).to(next(classifier.parameters()).device)
    per_element = classifier.granularity == "element" and element_loss == "per-element"
    if per_element and data.element_labels is None:
        raise ValueError("a per-element classifier needs an oracle that returns element_valid")
    pi1 = float(data.labels.float().mean()) if minibatch == "uniform" else 0.5
    check_targets(targets, data, classifier.granularity)
    draw = _row_sampler(data, train.batch_size, minibatch, generator)
    loss = ClassifierLoss(
        process,
        alpha=synth.alpha,
        weighting=weighting,
        pi1=pi1,
        element_loss=element_loss,
        targets=targets,
        score_weight=score_weight,
        model=model,
        score_on=score_on,
        score_data=score_data if score_on != "synthetic" else None,
    )

    def loss_fn(step):
        batch = data.index(draw())
        x0, cond = batch.data.x, batch.data.cond
        return loss(classifier, x0, cond, batch.labels, batch.element_labels, generator)

    chooser = None
    if select == "holdout":
        device = next(classifier.parameters()).device
        held = held.to(device)
        held_loss = ClassifierLoss(
            process,
            alpha=synth.alpha,
            weighting=weighting,
            pi1=float(held.labels.float().mean()),
            element_loss=element_loss,
        )
        chooser = HeldOutSelection(classifier, held, held_loss)
    params = classifier.parameters()
    history = fit(
        params,
        loss_fn,
        train,
        desc="classifier",
        progress=progress,
        log=log,
        sharded=True,
        on_window=chooser,
    )
    if chooser is not None:
        chooser.restore()
        if log is not None:
            checks = ", ".join(f"{s}: {v:.4g}" for s, v in chooser.history)
            log(
                f"classifier: kept the weights of step {chooser.best_step} "
                f"(held-out loss by step: {checks})"
            )
    return history


def _row_sampler(data, batch_size: int, minibatch: str, generator):
    """Row indices of one classifier minibatch, drawn with replacement (also when the set is
    smaller): from the whole set, or half from the positives and half from the negatives."""
    n = len(data)
    if minibatch == "uniform":
        return lambda: rng.randint(n, (min(batch_size, n),), generator)
    groups = [data.labels.nonzero().squeeze(1), (~data.labels).nonzero().squeeze(1)]
    if min(len(g) for g in groups) == 0:
        raise ValueError("balanced minibatches need both labels in the synthetic set")
    half = max(batch_size // 2, 1)

    def draw():
        return torch.cat([g[rng.randint(len(g), (half,), generator).to(g.device)] for g in groups])

    return draw
