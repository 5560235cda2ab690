"""The three losses of Gen-neG, as callables that hold their noise-level distribution and
weighting (as EDM's ``loss.py`` does):

* :class:`DenoisingLoss`: denoising score matching, Eq. (5) (the baseline DM);
* :class:`ClassifierLoss`: the importance-weighted BCE of Eq. (13) and its ablations;
* :class:`DistillationLoss`: the student-teacher regression of Eq. (14).

Each draws the whole batch's noise levels and noise from the generator first and then
evaluates the networks through :func:`genneg.distributed.sharded_mean`: in one process on
every row, under torchrun on this rank's rows only, scaled so that the ranks' shares add up to
the one-process loss. One code path serves both, so a plugin's trainer (a registered distiller,
say) gets sharding by calling them.

Errors are means over real coordinates (padded agents or frames, ``cond["mask"]`` False, do not
count), then over the batch.

Per-element classifiers (one logit ``f_a`` per agent or frame) all guide with
``log C(x) = sum_a log sigmoid(f_a)``, i.e. ``C = prod_a sigmoid(f_a)``; they differ in what
they are trained on (:data:`ELEMENT_LOSSES`):

``per-element`` (the paper's by-agent classifier)
    each ``sigmoid(f_a)`` is fit to the element's own oracle label with the scene's weight. Its
    optimum is ``sigmoid(f_a) = p(y_a = 1 | x_t)``, so ``log C = sum_a log p(y_a = 1 | x_t)``,
    which is ``log p(y = 1 | x_t)`` of Theorem 1 only when the elements' labels are independent
    given ``x_t``. A collision flags both vehicles: with two agents whose only infraction is
    colliding with each other, ``log C = 2 log p(y = 1 | x_t)``, guidance at twice the scale.
``joint``
    ``C = prod_a sigmoid(f_a)`` is fit to the scene label with the scene BCE of Eq. (13)
    (:func:`joint_element_bce`). That is Eq. (10)/(12) for a classifier whose family is
    products of element sigmoids, and the product can represent any ``p(y = 1 | x_t)`` in
    (0, 1) (e.g. ``sigmoid(f_a) = p^(1/N)`` each), so its Bayes optimum is exactly
    ``p(y = 1 | x_t)``: Theorem 1's guidance, whatever the labels' dependence. Guidance only
    sees the product, so how the network splits it between elements does not matter; element
    labels are not used (any fixed weight on an element-label term would move the optimum
    again), and an oracle without ``element_valid`` is enough. For one element it is the
    per-sample BCE.
"""

from __future__ import annotations

import math

import attrs
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from genneg import rng
from genneg.classifier_targets import posterior_targets
from genneg.components import DataSplit, index_cond
from genneg.diffusion.shapes import broadcast, masked_sum, real_dims
from genneg.distributed import sharded_mean
from genneg.guidance import log_prob_from_logits

#: ``is``: Gen-neG (Eq. 13); ``no-is``: balanced set, equal weights (the paper's "w/o IS");
#: ``imbalanced``: the natural label ratio, equal weights (App. C.2).
WEIGHTINGS = ("is", "no-is", "imbalanced")

#: What a per-element classifier is trained on: ``per-element``: each element's oracle label
#: (the paper's by-agent loss); ``joint``: the scene label, through ``prod_a sigmoid(f_a)``.
ELEMENT_LOSSES = ("per-element", "joint")

#: Where the classifier's score term is charged (:class:`ClassifierLoss`): the synthetic
#: set's valid samples, noised training data, or both.
SCORE_ON = ("synthetic", "data", "both")


def _regression(weight_fn, model, xt, x0, cond, sigma, target_fn):
    """``mean weight(sigma) |model(x_t; sigma) - target|^2`` (per real coordinate), sharded."""

    def mean_fn(rows):
        x, s, c = xt[rows], sigma[rows], index_cond(cond, rows)
        target = target_fn(x, s, c, rows)
        return weighted_error(weight_fn, model(x, s, **c), target, x0[rows], c, s)

    return sharded_mean(mean_fn, x0.shape[0])


class DenoisingLoss:
    """Eq. (5) in the denoiser's x0 units: ``E[lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2]``
    with the process' training noise levels and weighting (EDM's ``EDMLoss``; DDPM's "simple"
    loss for VP)."""

    def __init__(self, process):
        self.process = process

    def __call__(self, denoiser, x0, cond, generator=None) -> torch.Tensor:
        sigma = self.process.sample_training_sigma(x0.shape[0], generator, x0.device)
        noise = rng.randn(x0.shape, generator, x0.device, x0.dtype)
        xt = x0 + broadcast(sigma, x0) * noise
        return _regression(
            self.process.loss_weight, denoiser, xt, x0, cond, sigma, lambda x, s, c, rows: x0[rows]
        )


def _inverse_square(sigma: torch.Tensor) -> torch.Tensor:
    return sigma**-2


class DistillationLoss:
    """Eq. (14): ``E_{x0 ~ q, sigma}[gamma(sigma) |s_teacher - s_student|^2]`` on noised true
    data. Since ``|s_teacher - s_student|^2 = |D_teacher - D_student|^2 / sigma^4``, we regress
    in denoiser space with the process' training weight ``lambda(sigma)`` as gamma (the weighting
    of the baseline's Eq. 5) and its training noise levels. The teacher (a stacked, guided model)
    is evaluated without a graph through it.

    ``sigma="elbo"`` draws ``ln sigma`` uniformly on ``[sigma_min, sigma_max]`` and weights the
    error by ``1 / sigma^2`` instead: gamma_t of the continuous-time ELBO (:mod:`genneg.elbo`),
    so the loss is the student's ELBO-weighted distance to the teacher at every noise level the
    ELBO and the sampler visit.

    ``window = (sigma_lo, sigma_hi)`` (``distill.in_window``, for a student confined to the
    teacher's guidance window, :mod:`genneg.student`): the noise levels are drawn from the same
    distribution conditioned on lying in the window (ELBO levels: log-uniform on the
    intersection), and ``states`` outside it are dropped; the terms left out are zero for such
    a student, so the loss keeps its optimum and spends every row where the teacher differs
    from the baseline.
    """

    SIGMAS = ("training", "elbo")

    def __init__(self, process, sigma: str = "training", window=()):
        if sigma not in self.SIGMAS:
            raise ValueError(f"distill sigma must be 'training' or 'elbo', got {sigma!r}")
        self.process, self.sigma = process, sigma
        self.window = tuple(float(w) for w in window)
        if self.window and not (len(self.window) == 2 and 0 <= self.window[0] < self.window[1]):
            raise ValueError(f"a distillation window is [sigma_lo, sigma_hi], got {list(window)}")

    def _inside(self, sigma: torch.Tensor) -> torch.Tensor:
        lo, hi = self.window
        return (sigma >= lo) & (sigma <= hi)

    def states_in_window(self, states):
        """``states`` (:class:`genneg.engine.distill.NoisyStates`) whose levels lie in the
        window (all of them without one)."""
        if states is None or not self.window:
            return states
        return states.index(self._inside(states.sigma).nonzero().squeeze(1))

    def _training_sigma(self, n: int, generator, device) -> torch.Tensor:
        """``n`` training noise levels, conditioned on the window (rejection, in rounds)."""
        draw = self.process.sample_training_sigma
        if not self.window:
            return draw(n, generator, device)
        kept, have = [], 0
        for _ in range(1000):
            sigma = draw(max(4 * n, 256), generator, device)
            sigma = sigma[self._inside(sigma)]
            kept.append(sigma)
            have += len(sigma)
            if have >= n:
                return torch.cat(kept)[:n]
        raise ValueError(
            f"the distillation window {list(self.window)} holds (almost) none of the process' "
            f"training noise levels; widen classifier.guidance_window or turn distill.in_window off"
        )

    def draw(self, x0, cond, generator=None, states=None) -> NoisyRows:
        """The rows Eq. (14) is regressed at: ``x0`` noised here at this loss' levels, then
        ``states`` (a :class:`genneg.engine.distill.NoisyStates`: ``points`` already noisy,
        taken as they are, with the same weight of their ``sigma``; those outside the window
        are dropped)."""
        n, p = x0.shape[0], self.process
        if self.sigma == "elbo":
            lo, hi = p.sigma_min, p.sigma_max
            if self.window:
                lo, hi = max(lo, self.window[0]), min(hi, self.window[1])
                if not lo < hi:
                    raise ValueError(
                        f"the distillation window {list(self.window)} misses the ELBO's levels "
                        f"[{p.sigma_min:.4g}, {p.sigma_max:.4g}]"
                    )
            lo, hi = math.log(lo), math.log(hi)
            sigma = torch.exp(lo + (hi - lo) * rng.rand(n, generator, x0.device))
        else:
            sigma = self._training_sigma(n, generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, generator, x0.device)
        states = self.states_in_window(states)
        if states is not None and len(states):
            noisy = DataSplit.cat([DataSplit(x=xt, cond=cond), states.points])
            xt, cond, x0 = noisy.x, noisy.cond, torch.cat([x0, states.points.x])
            sigma = torch.cat([sigma, states.sigma.to(sigma)])
        return NoisyRows(xt=xt, x0=x0, cond=cond, sigma=sigma)

    def weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """gamma(sigma) of Eq. (14): the process' training weight, or ``1 / sigma^2`` for
        the ELBO's levels."""
        return _inverse_square(sigma) if self.sigma == "elbo" else self.process.loss_weight(sigma)

    def __call__(self, student, teacher, x0, cond, generator=None, states=None) -> torch.Tensor:
        """The loss at the rows of :meth:`draw` (``x0`` noised here, and ``states``),
        averaged over all rows; the teacher is evaluated on this rank's rows only."""
        rows = self.draw(x0, cond, generator, states)
        return _regression(
            self.weight,
            student,
            rows.xt,
            rows.x0,
            rows.cond,
            rows.sigma,
            lambda x, s, c, rows: teacher(x, s, **c).detach(),
        )


@attrs.frozen(kw_only=True)
class NoisyRows:
    """Rows of a regression on noisy points: ``xt`` at levels ``sigma`` ``[B]``, the clean
    ``x0`` they count real coordinates of, and their conditioning tensors ``cond``."""

    xt: torch.Tensor
    x0: torch.Tensor
    cond: dict
    sigma: torch.Tensor

    def index(self, rows) -> NoisyRows:
        return NoisyRows(
            xt=self.xt[rows], x0=self.x0[rows], cond=index_cond(self.cond, rows),
            sigma=self.sigma[rows],
        )  # fmt: skip


def weighted_error(weight, out, target, x0, cond, sigma) -> torch.Tensor:
    """``mean weight(sigma) |out - target|^2``: per real coordinate of each row (padded
    elements, ``cond["mask"]`` False, do not count), then over the rows."""
    err = broadcast(weight(sigma), out) * (out - target) ** 2
    return (masked_sum(err, cond) / real_dims(x0, cond)).mean()


def label_weights(
    labels: torch.Tensor, alpha: float, weighting: str, pi1: float = 0.5
) -> torch.Tensor:
    """Per-sample importance weights (Eq. 33) for scene labels ``labels`` (bool ``[B]``) from a
    training set whose fraction of positives is ``pi1`` (1/2 for a balanced set). Only ``is``
    reweights: positives by ``alpha / pi1``, negatives by ``(1 - alpha) / (1 - pi1)``, which for
    the balanced set of Algorithm 1 is Eq. (13) up to a factor 2."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
    if weighting != "is":
        return torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not 0.0 < pi1 < 1.0:
        raise ValueError(f"the training set needs both labels (positive fraction {pi1})")
    w_pos, w_neg = alpha / pi1, (1.0 - alpha) / (1.0 - pi1)
    return torch.where(labels, torch.tensor(w_pos), torch.tensor(w_neg)).to(labels.device)


def weighted_bce(
    logits, labels, weights, *, element_labels=None, mask=None, element_loss="per-element"
) -> torch.Tensor:
    """Mean over the batch of ``weight * BCE``.

    Per-sample logits ``[B]`` use the scene labels. Per-element logits ``[B, N]`` with
    ``element_loss="per-element"`` use ``element_labels`` ``[B, N]`` and sum the elements' BCE
    over real elements, since ``log C(scene) = sum_a log C_a``; the scene's weight applies to
    all its elements. With ``"joint"`` they are scored as one classifier on the scene labels
    (:func:`joint_element_bce`).
    """
    if element_loss not in ELEMENT_LOSSES:
        raise ValueError(f"unknown element_loss {element_loss!r}; choose from {ELEMENT_LOSSES}")
    if logits.ndim == 2 and element_loss == "joint":
        return joint_element_bce(logits, labels, weights, mask=mask)
    if logits.ndim == 1:
        bce = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
    else:
        if element_labels is None:
            raise ValueError("per-element logits need element_labels")
        bce = F.binary_cross_entropy_with_logits(logits, element_labels.float(), reduction="none")
        if mask is not None:
            bce = bce * mask.to(bce.dtype)
        bce = bce.sum(dim=1)
    return (weights * bce).mean()


def joint_element_bce(logits, labels, weights, *, mask=None) -> torch.Tensor:
    """Eq. (13) for the scene classifier ``C = prod_a sigmoid(f_a)`` built from per-element
    logits ``[B, N]`` (product over real elements), against scene labels ``[B]``: the mean
    of ``weight * -(y log C + (1 - y) log(1 - C))``.

    With ``T = -log C = sum_a softplus(-f_a)``: ``log C = -T`` and
    ``log(1 - C) = log(-expm1(-T))``, both stable; ``T`` is floored at 1e-30 so that a negative
    scene whose every element is confidently valid has a finite loss (about 69 nats).
    """
    if logits.ndim != 2:
        raise ValueError(f"joint_element_bce needs per-element logits [B, N], got {logits.ndim}-D")
    t = F.softplus(-logits)
    if mask is not None:
        t = t * mask.to(t.dtype)
    t = t.sum(dim=1).clamp_min(1e-30)
    nll = torch.where(labels, t, -torch.log(-torch.expm1(-t)))
    return (weights * nll).mean()


class ClassifierLoss:
    """Eq. (13): the importance-weighted BCE of a time-dependent classifier on
    ``x_t = x0 + sigma eps`` of labelled model samples (``x0``), with the noise levels of the
    process' ``sample_classifier_sigma``.

    :param alpha: the model's fraction of valid samples (Algorithm 1's class prior).
    :param weighting: ``is`` (Gen-neG), ``no-is`` or ``imbalanced`` (ablations).
    :param pi1: the training set's fraction of positives (1/2 for the balanced set).
    :param element_loss: for per-element logits, ``per-element`` (each element's label, the
        paper's by-agent loss) or ``joint`` (the scene label through ``prod_a sigmoid(f_a)``).
    :param targets: ``hard`` (the oracle's labels) or ``posterior`` (the labels averaged over
        which training point of the minibatch made ``x_t``: the same expected loss, less label
        noise; :mod:`genneg.classifier_targets`).
    :param score_weight: ``> 0`` adds that multiple of :func:`guided_denoising_change` on the
        minibatch's valid rows (scaled by ``1 / pi1``, an estimate of its mean over the valid
        samples); needs ``model``, the denoiser that drew the synthetic set (the current
        stacked model).
    :param score_on: where the score term is charged: ``synthetic`` (the minibatch's valid
        rows, above), ``data`` (instead, ``round(pi1 * B)`` rows of ``score_data``, the
        training split, noised at the classifier's levels) or ``both`` (the sum). Why data
        (ours): the term's optimum over valid samples of the model is Theorem 1's gradient
        (:func:`guided_denoising_change`); training scenes are valid, and where the model
        fits the data its valid part is the data, so the optimum is the same, while the
        term is then charged where the r-ELBO is measured (real scenes) and on every
        training map rather than on the synthetic set's (on SUMO traffic 11948 scenes on
        4302 maps against 1000 valid synthetic scenes).
    """

    def __init__(
        self,
        process,
        *,
        alpha: float,
        weighting: str = "is",
        pi1: float = 0.5,
        element_loss: str = "per-element",
        targets: str = "hard",
        score_weight: float = 0.0,
        model=None,
        score_on: str = "synthetic",
        score_data: DataSplit | None = None,
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")
        if element_loss not in ELEMENT_LOSSES:
            raise ValueError(f"unknown element_loss {element_loss!r}; choose from {ELEMENT_LOSSES}")
        if score_weight < 0:
            raise ValueError(f"score_weight must be >= 0, got {score_weight}")
        if score_weight and model is None:
            raise ValueError(
                "score_weight > 0 needs model= (the denoiser that drew the synthetic set)"
            )
        self.process, self.alpha, self.weighting, self.pi1 = process, alpha, weighting, pi1
        self.element_loss, self.targets = element_loss, targets
        if score_on not in SCORE_ON:
            raise ValueError(f"unknown score_on {score_on!r}; choose from {SCORE_ON}")
        if score_weight and score_on != "synthetic" and (score_data is None or not len(score_data)):
            raise ValueError(f"score_on = {score_on!r} needs score_data (the training split)")
        self.score_weight, self.model = score_weight, model
        self.score_on, self.score_data = score_on, score_data
        self._on_synthetic = bool(score_weight) and score_on != "data"
        self._on_data = bool(score_weight) and score_on != "synthetic"

    def __call__(
        self, classifier, x0, cond, labels, element_labels=None, generator=None
    ) -> torch.Tensor:
        weights = label_weights(labels, self.alpha, self.weighting, self.pi1)
        sigma = self.process.sample_classifier_sigma(x0.shape[0], generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, generator, x0.device)
        targets = labels
        if self.targets == "posterior":
            targets = posterior_targets(xt, sigma, x0, labels, weights)

        def bce(logits, idx, c):
            return weighted_bce(
                logits,
                targets[idx],
                weights[idx],
                element_labels=None if element_labels is None else element_labels[idx],
                mask=c.get("mask"),
                element_loss=self.element_loss,
            )

        def mean_fn(rows):
            if not self._on_synthetic or not labels[rows].any():
                c = index_cond(cond, rows)
                return bce(classifier(xt[rows], sigma[rows], **c), rows, c)
            idx = torch.arange(x0.shape[0], device=x0.device)[rows]
            valid = idx[labels[idx]]
            idx = torch.cat([valid, idx[~labels[idx]]])  # the valid rows first
            c = index_cond(cond, idx)
            n_valid = len(valid)
            c_valid = index_cond(c, slice(0, n_valid))
            # the valid rows' one forward pass serves the BCE and the score term
            x = xt[valid].detach().requires_grad_(True)
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                logits = classifier(x, sigma[valid], **c_valid)
                change = _denoising_change(
                    log_prob_from_logits(logits, classifier.granularity, c_valid.get("mask")),
                    x,
                    self.model,
                    x0[valid],
                    sigma[valid],
                    c_valid,
                )
            if n_valid < len(idx):
                rest = idx[n_valid:]
                c_rest = index_cond(c, slice(n_valid, None))
                logits = torch.cat([logits, classifier(xt[rest], sigma[rest], **c_rest)])
            return bce(logits, idx, c) + self.score_weight * change.sum() / (len(idx) * self.pi1)

        loss = sharded_mean(mean_fn, x0.shape[0])
        if self._on_data:
            loss = loss + self.score_weight * self._data_term(classifier, x0, generator)
        return loss

    def _data_term(self, classifier, x0, generator) -> torch.Tensor:
        """The mean score term on ``round(pi1 * B)`` noised rows of ``score_data``."""
        n = max(1, round(self.pi1 * x0.shape[0]))
        data = self.score_data
        rows = rng.randint(len(data), (n,), generator).to(data.x.device)
        real = data.index(rows).to(x0.device)
        x, cond = real.x, real.cond
        sigma = self.process.sample_classifier_sigma(n, generator, x0.device)
        xt = x + broadcast(sigma, x) * rng.randn(x.shape, generator, x0.device)

        def mean_fn(rows):
            c = index_cond(cond, rows)
            return guided_denoising_change(
                classifier, self.model, xt[rows], x[rows], sigma[rows], c
            ).mean()

        return sharded_mean(mean_fn, n)


def guided_denoising_change(classifier, model, xt, x0, sigma, cond) -> torch.Tensor:
    """Per row, the change that guiding ``model`` with ``classifier`` makes to its denoising
    loss at ``x_t = x0 + sigma eps`` (nats, summed over real coordinates):

        1/2 |eps - eps_hat_guided|^2 - 1/2 |eps - eps_hat|^2
            = g . (D(x_t) - x0) + sigma^2 / 2 |g|^2,     g = grad_x log C(x_t; sigma),

    since guidance (Eq. 9) moves ``D`` by ``sigma^2 g``, i.e. ``eps_hat`` by ``-sigma g``. It is
    one level's term of the guided model's r-ELBO (:mod:`genneg.elbo`) with the sign flipped.

    Its mean over valid samples ``x0 ~ p(x0 | y = 1)`` of ``model`` is minimised, over all
    functions ``g``, by ``sigma^2 g = E[x0 | x_t, y = 1] - D(x_t)``; with ``D`` the model's exact
    posterior mean that is ``sigma^2 grad log p(y = 1 | x_t)`` (Tweedie's formula for the model
    and for its valid part): Theorem 1's guidance, the optimum of Eq. (13) too. So as a second
    term of the classifier's loss it keeps Eq. (13)'s optimum (for a per-sample or ``joint``
    classifier; a ``per-element`` one's BCE optimum counts shared infractions more than once,
    and the two then pull apart), and it trains the classifier's input gradient directly where
    Eq. (13) only trains its values: a gradient that moves valid samples off their denoising
    target costs in this term what it costs the guided model's likelihood.
    ``model`` runs without a graph; the classifier's gradient keeps its graph (double
    backward, through the math attention kernel), so the term trains it."""
    x = xt.detach().requires_grad_(True)
    # the fused attention kernels have no double backward; the math one has
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        return _denoising_change(classifier.log_prob(x, sigma, **cond), x, model, x0, sigma, cond)


def _denoising_change(log_c, x, model, x0, sigma, cond) -> torch.Tensor:
    """:func:`guided_denoising_change` from ``log C`` per row of ``x`` (which requires a
    gradient; call under ``torch.enable_grad()`` and the math attention kernel)."""
    with torch.no_grad():
        denoised = model(x.detach(), sigma, **cond)
    grad = torch.autograd.grad(log_c.sum(), x, create_graph=True)[0]
    change = grad * (denoised - x0) + 0.5 * broadcast(sigma, x) ** 2 * grad**2
    return masked_sum(change, cond)
