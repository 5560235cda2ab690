"""Diagnostics of a trained guidance classifier, per noise level, on held-out synthetic data.

For every classifier the run holds out part of its synthetic set (``classifier.holdout``) and
measures there, in bins of ``log sigma``:

* ``acc``: accuracy of ``C > 1/2`` under the model's label ratio (each point weighted by its
  importance weight of Eq. 33, so positives count ``alpha`` and negatives ``1 - alpha``);
* ``bce``: the importance-weighted BCE of Eq. (13), the quantity the classifier minimises;
* ``ece``: expected calibration error, the weighted mean of ``|mean C - fraction valid|`` over
  ten bins of ``C``;
* the gap to the Bayes classifier (below): ``bce_bayes`` (its weighted BCE on the same points
  and noise), ``p_gap`` (mean ``|C - C*|``) and ``grad_gap``.

**The Bayes classifier.** The optimal classifier of Eq. (13) is ``C*(x_t) = p_theta(valid |
x_t)`` under the current (guided) model, which has no closed form for a learned model. We use
the Bayes classifier of the *empirical* model distribution: the classifier's own training
points ``x0_i`` with labels ``y_i`` and importance weights ``w_i`` (which restore the model's
label ratio, Eq. 33) define the mixture ``sum_i w_i N(x_t; x0_i, sigma^2 I)``, whose posterior

    C*(x_t) = sum_i w_i y_i N(x_t; x0_i, sigma^2) / sum_i w_i N(x_t; x0_i, sigma^2)

is exact for that mixture and converges to ``p_theta(valid | x_t)`` as the set grows (a
Gaussian-kernel estimate with bandwidth sigma). It is a fair reference: it sees exactly the
data the classifier trained on, and is evaluated on held-out points. It is unreliable where
``sigma`` is below the spacing of the training points (few kernels contribute): ``ess``
reports the mean effective number of contributing points per query, and a bin with ``ess``
below ~10 should not be read as a gap of the learned classifier.

**What guidance costs.** Guidance adds ``g = sigma^2 grad log C`` to the denoiser (Eq. 9); the
continuous-time ELBO (:mod:`genneg.elbo`) charges a denoiser error ``e`` as ``|e|^2 / sigma^2``
per unit of ``ln sigma``. So a classifier whose gradient differs from the Bayes classifier's
costs about ``int sigma^2 |grad log C - grad log C*|^2 d ln sigma`` nats against the guided
model with ``C*``. ``grad_gap`` is ``E[sigma^2 |grad log C - grad log C*|^2] / dims`` over the
held-out *valid* points (the ELBO is scored on valid data) and ``elbo_cost`` its integral over
``[sigma_min, sigma_max]`` in nats/dim, counting only the noise levels where the kernel
gradient is reliable (``ess >= MIN_ESS_GRAD``, in practice the high ones): a lower bound,
through the kernel reference, of what the classifier's gradient error costs in held-out ELBO.

**Valid-data penalty.** ``valid_penalty`` is ``E[-log C(x; sigma_min)] / dims`` over the real
held-out (valid) data (:func:`valid_data_penalty`): what a classifier that is unsure of valid
points gives back of the gain ``-log alpha``. On the checkerboard it is the dominant cost.
"""

from __future__ import annotations

import math

import torch

from genneg import rng
from genneg.classifier_targets import kernel_bayes_log_prob
from genneg.diffusion.shapes import broadcast
from genneg.losses import label_weights

#: Fewest effective reference points per query for the kernel Bayes classifier to count.
MIN_ESS = 10.0
#: The same for its gradient, which is far noisier than its value (measured on the
#: checkerboard: at ess ~40 the gradient gap is dominated by the reference's own noise).
MIN_ESS_GRAD = 300.0


def _bins(process, n_bins: int):
    lo, hi = math.log(process.sigma_min), math.log(process.sigma_max)
    return torch.linspace(lo, hi, n_bins + 1)


def _balanced_rows(labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of at most ``limit`` rows: the first ``limit // 2`` of each label (all of the
    rarer one and more of the other if it has fewer), so that a set with many more positives
    (``synth.keep_positive``) is not cut to positives only. The rows of a synthetic set are in
    random order within each label (:func:`hold_out` permutes them)."""
    pos, neg = labels.nonzero().squeeze(1), (~labels).nonzero().squeeze(1)
    k_neg = min(len(neg), max(limit // 2, limit - len(pos)))
    k_pos = min(len(pos), limit - k_neg)
    return torch.cat([pos[:k_pos], neg[:k_neg]])


def classifier_diagnostics(
    classifier,
    held,
    reference,
    *,
    alpha: float,
    weighting: str,
    process,
    generator,
    n_bins: int = 8,
    draws: int = 4,
    max_points: int = 2000,
    max_reference: int = 8000,
) -> dict:
    """Per-noise-level diagnostics of ``classifier`` on the held-out :class:`LabelledSet`
    ``held``, with the kernel Bayes classifier of ``reference`` (its training set).

    Each held-out point is noised at ``draws`` noise levels, stratified in ``ln sigma`` over
    the process' range, with the generator's noise, so that classifiers of one run are scored
    the same way. Per-sample classifiers on unconditional data only (per-element classifiers
    and conditions are reported without the Bayes reference). Returns a dict of per-bin lists
    (``sigma_lo``, ``sigma_hi``, ``n``, ``acc``, ``bce``, ``ece``, ``bce_bayes``, ``p_gap``,
    ``grad_gap``, ``ess``) and the totals ``bce``, ``acc``, ``elbo_cost``.
    """
    device = next(classifier.parameters()).device
    if len(held) > max_points:
        held = held.index(_balanced_rows(held.labels, max_points))
    held = held.to(device)
    x0, cond, labels = held.data.x, held.data.cond, held.labels
    n = len(held)
    pi1_held = float(labels.float().mean())
    # weights of the classifier's loss (Eq. 33), with the held-out label ratio
    w = label_weights(labels, alpha, weighting, pi1_held) if 0 < pi1_held < 1 else None
    if w is None:
        w = torch.ones(n, device=device)
    edges = _bins(process, n_bins)
    lo, hi = float(edges[0]), float(edges[-1])
    u = (torch.arange(draws)[None] + rng.rand((n, draws), generator)) / draws  # stratified
    lsig = (lo + (hi - lo) * u).reshape(-1).to(device)
    sigma = torch.exp(lsig)
    rep = torch.arange(n, device=device).repeat_interleave(draws)
    x = x0[rep]
    xt = x + broadcast(sigma, x) * rng.randn(x.shape, generator, device)
    y, wt = labels[rep], w[rep]
    c = {k: v[rep] for k, v in cond.items()}

    xg = xt.detach().requires_grad_(True)
    with torch.enable_grad():
        logc = classifier.log_prob(xg, sigma, **c)  # per-element ones: summed (the scene's)
        grad = torch.autograd.grad(logc.sum(), xg)[0]
    logc, grad = logc.detach().clamp(max=-1e-7), grad.detach()
    log1m = torch.log(-torch.expm1(logc))  # log(1 - C)
    bce = -torch.where(y, logc, log1m)
    p = logc.exp()
    correct = ((p > 0.5) == y).float()

    has_ref = reference is not None and not cond and classifier.granularity == "sample"
    if has_ref:
        ref = reference.to(device)
        if len(ref) > max_reference:  # the weights below use the subset's label ratio
            ref = ref.index(_balanced_rows(ref.labels.cpu(), max_reference).to(device))
        pi1_ref = float(ref.labels.float().mean())
        rw = label_weights(ref.labels, alpha, "is", pi1_ref) if 0 < pi1_ref < 1 else None
        if rw is None:
            has_ref = False
    if has_ref:
        xr = xt.detach().requires_grad_(True)
        with torch.enable_grad():
            lp, ln, ess = kernel_bayes_log_prob(xr, sigma, ref.data.x, ref.labels, rw)
            grad_b = torch.autograd.grad(lp.sum(), xr)[0]
        lp, ln = lp.detach(), ln.detach()
        bce_b = -(torch.where(y, lp, ln))
        p_b = lp.exp()
        dims = x[0].numel()
        gg = (broadcast(sigma, x) ** 2 * (grad - grad_b) ** 2).reshape(len(x), -1).sum(1)
        gg = gg * sigma**-2 / dims  # sigma^2 |grad diff|^2 = |sigma^2 grad diff|^2 / sigma^2
        valid = y.bool()

    out = {k: [] for k in ("sigma_lo", "sigma_hi", "n", "acc", "bce", "ece")}
    if has_ref:
        for k in ("bce_bayes", "p_gap", "grad_gap", "ess"):
            out[k] = []
    which = torch.bucketize(lsig.cpu(), edges[1:-1].contiguous()).to(device)
    for b in range(n_bins):
        m = which == b
        wb = wt[m]
        out["sigma_lo"].append(math.exp(float(edges[b])))
        out["sigma_hi"].append(math.exp(float(edges[b + 1])))
        out["n"].append(int(m.sum()))
        if not m.any():
            for k in out:
                if k not in ("sigma_lo", "sigma_hi", "n"):
                    out[k].append(float("nan"))
            continue
        out["acc"].append(float((wb * correct[m]).sum() / wb.sum()))
        out["bce"].append(float((wb * bce[m]).mean()))
        out["ece"].append(_ece(p[m], y[m], wb))
        if has_ref:
            out["bce_bayes"].append(float((wb * bce_b[m]).mean()))
            out["p_gap"].append(float((p[m] - p_b[m]).abs().mean()))
            mv = m & valid
            e_med = float(ess[m].median())
            reliable = mv.any() and e_med >= MIN_ESS_GRAD  # the kernel gradient is noise below
            out["grad_gap"].append(float(gg[mv].mean()) if reliable else float("nan"))
            out["ess"].append(e_med)
    totals = {
        "bce": float((wt * bce).mean()),
        "acc": float((wt * correct).sum() / wt.sum()),
    }
    if has_ref:
        # totals over the queries where the kernel reference is reliable (ess >= MIN_ESS)
        r = ess >= MIN_ESS
        totals["bce_reliable"] = float((wt * bce)[r].mean()) if r.any() else math.nan
        totals["bce_bayes"] = float((wt * bce_b)[r].mean()) if r.any() else math.nan
        totals["p_gap"] = float((p - p_b).abs()[r].mean()) if r.any() else math.nan
        # int sigma^2 |grad diff|^2 d ln sigma ~ (hi - lo) * mean over log-uniform sigma
        # only where the kernel gradient is reliable (ess >= MIN_ESS_GRAD); elsewhere counted
        # as 0, so this is a lower bound of the cost over the whole range
        ok = valid & (ess >= MIN_ESS_GRAD)
        cost = (hi - lo) * (gg * ok).sum() / valid.sum() if valid.any() else math.nan
        totals["elbo_cost"] = float(cost)
    return {"bins": out, **totals, "n_points": n, "draws": draws}


def _ece(p, y, w, n_bins: int = 10) -> float:
    """Weighted expected calibration error over ``n_bins`` equal-width bins of ``p``."""
    idx = torch.clamp((p * n_bins).long(), max=n_bins - 1)
    total, err = float(w.sum()), 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            wb = w[m]
            err += float((wb * p[m]).sum() - (wb * y[m].float()).sum()).__abs__()
    return err / total if total > 0 else float("nan")


def plot_diagnostics(diags: list[dict], path, title: str) -> None:
    """Accuracy, weighted BCE (with the Bayes classifier's, dashed) and the gradient gap per
    noise level, one line per classifier (stage)."""
    from genneg.plots import plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for i, d in enumerate(diags):
        b = d["bins"]
        s = [math.sqrt(a * c) for a, c in zip(b["sigma_lo"], b["sigma_hi"], strict=True)]
        color = f"C{i}"
        axes[0].plot(s, b["acc"], marker="o", color=color, label=d["stage"])
        axes[1].plot(s, b["bce"], marker="o", color=color, label=d["stage"])
        if "bce_bayes" in b:  # only where the kernel reference is reliable
            ok = [e >= MIN_ESS for e in b["ess"]]
            bayes = [v if o else math.nan for v, o in zip(b["bce_bayes"], ok, strict=True)]
            axes[1].plot(s, bayes, ls="--", color=color)
            axes[2].plot(s, b["grad_gap"], marker="o", color=color, label=d["stage"])
    axes[0].set_ylabel("accuracy (model's label ratio)")
    axes[1].set_ylabel("weighted BCE (Eq. 13); dashed: Bayes")
    axes[2].set_ylabel("gradient gap to Bayes (nats/dim per ln sigma)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("sigma")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hold_out(synth, fraction: float, generator):
    """Split a :class:`~genneg.engine.synth.SynthResult` into the part the classifier trains
    on and a held-out :class:`LabelledSet` (``fraction`` of the positives and of the
    negatives, chosen at random, so both parts keep the balanced ratio). ``fraction == 0``:
    ``(synth, None)``. The class prior ``alpha`` comes from the counts and is unchanged."""
    if fraction == 0:
        return synth, None
    if not 0 < fraction < 1:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    import attrs

    from genneg.engine.synth import LabelledSet

    kept, held = {}, []
    for name in ("positives", "negatives"):
        part = getattr(synth, name)
        k = int(len(part) * fraction)
        if k < 1 or len(part) - k < 1:
            raise ValueError(
                f"cannot hold out {fraction} of {len(part)} {name}: both parts need a sample"
            )
        perm = torch.randperm(len(part), generator=generator)
        held.append(part.index(perm[:k]))
        kept[name] = part.index(perm[k:])
    return attrs.evolve(synth, **kept), LabelledSet.cat(held)


@torch.no_grad()
def valid_data_penalty(classifier, data, process, max_points: int = 2000) -> float:
    """``E[-log C(x; sigma_min)]`` per dimension over real held-out data ``x`` (a
    :class:`DataSplit`, valid by assumption).

    Under Theorem 1 the stacked model is the previous one times ``C(x; sigma -> 0)``,
    renormalised; so on valid data its log-likelihood changes by ``log C(x; 0) - log Z``
    with ``Z`` = the previous model's mass that ``C`` keeps. The optimal classifier has
    ``C = 1`` on valid points and ``Z = alpha``; this penalty is what a learned classifier that
    is unsure of valid points (typically near the boundary of the valid set, where it is
    blurred) gives back of the gain ``-log alpha``."""
    n = min(max_points, len(data))
    part = data.index(torch.arange(n))
    device = next(classifier.parameters()).device
    x = part.x.to(device)
    cond = {k: v.to(device) for k, v in part.cond.items()}
    from genneg.diffusion.shapes import real_dims

    sigma = torch.full((n,), process.sigma_min, device=device)
    logc = classifier.log_prob(x, sigma, **cond)
    return float((-logc / real_dims(x, cond)).mean())


def record(
    rd, stage: str, classifier, held, synth, *, weighting, process, generator, valid_data=None
) -> dict:
    """Diagnose ``classifier`` on ``held``, with the kernel Bayes classifier of its training
    set ``synth`` (balanced positives and negatives), write a ``classifier`` event to
    ``metrics.jsonl`` and the plots ``plots/classifier_<stage>.png`` and
    ``plots/classifiers.png`` (every classifier of the run so far)."""
    from genneg.engine.rundir import atomic_path
    from genneg.engine.synth import LabelledSet

    reference = LabelledSet.cat([synth.positives, synth.negatives])
    diag = classifier_diagnostics(
        classifier,
        held,
        reference,
        alpha=synth.alpha,
        weighting=weighting,
        process=process,
        generator=generator,
    )
    if valid_data is not None:
        diag["valid_penalty"] = valid_data_penalty(classifier, valid_data, process)
    rd.metric("classifier", stage=stage, **diag)
    events = [e for e in rd.read_metrics("classifier") if e["stage"] != stage]
    events.append({"stage": stage, **diag})
    plots = rd.path / "plots"
    with atomic_path(plots / f"classifier_{stage}.png") as tmp:
        plot_diagnostics([events[-1]], tmp, f"{stage}: classifier by noise level (held out)")
    with atomic_path(plots / "classifiers.png") as tmp:
        plot_diagnostics(events, tmp, "classifiers by noise level (held out)")
    return diag


def diagnostics_table(events: list[dict]) -> str:
    """The classifier events of a run as Markdown: per stage the totals and, per noise-level
    bin, accuracy / weighted BCE (Bayes) / ``|C - C*|``."""
    lines = []
    for e in events:
        lines.append(
            f"{e['stage']}: held-out weighted BCE {e['bce']:.4f}"
            + (
                f" (where ess >= {MIN_ESS:g}: {e['bce_reliable']:.4f}, Bayes {e['bce_bayes']:.4f})"
                if "bce_bayes" in e
                else ""
            )
            + f", accuracy {e['acc']:.3f}"
            + (f", gradient cost >= {e['elbo_cost']:.4f} nats/dim" if "elbo_cost" in e else "")
            + (
                f", -log C(x; sigma_min) on valid data {e['valid_penalty']:.4f} nats/dim"
                if "valid_penalty" in e
                else ""
            )
        )
        b = e["bins"]
        head = ["sigma", "n", "accuracy", "BCE", "Bayes BCE", "|C - C*|", "ECE", "ess"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for j in range(len(b["n"])):

            def cell(key, fmt, j=j, b=b):
                v = b.get(key, [None] * (j + 1))[j]
                return "-" if v is None or v != v else format(v, fmt)

            lines.append(
                f"| {b['sigma_lo'][j]:.3g}-{b['sigma_hi'][j]:.3g} | {b['n'][j]} | "
                + " | ".join(
                    cell(k, f)
                    for k, f in (
                        ("acc", ".3f"),
                        ("bce", ".4f"),
                        ("bce_bayes", ".4f"),
                        ("p_gap", ".3f"),
                        ("ece", ".3f"),
                        ("ess", ".0f"),
                    )
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)


def paired_difference(values, reference) -> tuple[float, float]:
    """Mean and standard error of ``values - reference`` (per-point ELBOs of two stages on
    the same points and noise)."""
    d = torch.as_tensor(values, dtype=torch.float64)
    d = d - torch.as_tensor(reference, dtype=torch.float64)
    if len(d) < 2:
        return float(d.mean()), float("nan")
    return float(d.mean()), float(d.std(unbiased=True) / math.sqrt(len(d)))


def summary(diag: dict) -> str:
    """One line: the held-out weighted BCE (and the Bayes classifier's), accuracy, cost."""
    text = f"weighted BCE {diag['bce']:.4f}"
    if "bce_bayes" in diag:
        text += (
            f"; where the kernel Bayes reference is reliable {diag['bce_reliable']:.4f} against"
            f" its {diag['bce_bayes']:.4f}, mean |C - C*| {diag['p_gap']:.3f}"
        )
    text += f", accuracy {diag['acc']:.3f}"
    if "valid_penalty" in diag:
        text += f", -log C on valid data {diag['valid_penalty']:.4f} nats/dim"
    if "elbo_cost" in diag:
        text += f", gradient error >= ~{diag['elbo_cost']:.4f} nats/dim (high sigma)"
    return text


def elbo_vs_baseline(rd, stage: str, values, dims: float) -> dict:
    """Store ``stage``'s per-point ELBOs (``RUN/elbo_points/<stage>.pt``) and, for a later
    stage, return its paired difference to the baseline (``elbo_diff`` +- ``elbo_diff_se``: all
    stages are scored on the same points and noise) and the baseline's ELBO plus the gain
    Theorem 1 promises for the optimal classifiers so far, ``-sum_j log alpha_j / dims``
    (``elbo_ideal``; iteration ``j``'s model is iteration ``j - 1``'s truncated to the valid
    set, which raises each valid point's log-likelihood by ``-log alpha_j``). ``dims``: the
    points' harmonic mean dimension count (the mean of ``-log alpha / dims_i``)."""
    folder = rd.path / "elbo_points"
    folder.mkdir(exist_ok=True)
    from genneg.engine.rundir import atomic_path

    values = torch.as_tensor(values, dtype=torch.float64).cpu()
    with atomic_path(folder / f"{stage}.pt") as tmp:
        torch.save(values, tmp)
    base_path = folder / "baseline.pt"
    if stage == "baseline" or not base_path.exists():
        return {}
    base = torch.load(base_path, weights_only=True)
    if len(base) != len(values):
        return {}
    diff, se = paired_difference(values, base)
    alphas = {e["stage"]: e["alpha"] for e in rd.read_metrics("synth")}
    order = sorted((s for s in alphas if s.startswith("iter")), key=lambda s: int(s[4:]))
    if stage == "distill":
        upto = order
    else:
        upto = order[: order.index(stage) + 1] if stage in order else []
    gain = -sum(math.log(max(alphas[s], 1e-12)) for s in upto) / dims
    return {
        "elbo_diff": diff,
        "elbo_diff_se": se,
        "elbo_ideal": float(base.mean()) + gain,
    }
