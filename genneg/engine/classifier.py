"""Training a guidance classifier on a labelled synthetic set with Eq. (13)."""

from __future__ import annotations

from genneg import rng
from genneg.classifier_loss import label_weights, weighted_bce
from genneg.classifier_targets import check_targets, posterior_targets
from genneg.diffusion.shapes import broadcast
from genneg.engine.synth import _cat
from genneg.engine.train import cond_rows, fit, sharded_mean


def training_set(synth, weighting: str):
    """The balanced set D+ u D- (Algorithm 1), or the natural-ratio set for ``imbalanced``."""
    if weighting == "imbalanced":
        if synth.natural is None:
            raise ValueError("the imbalanced ablation needs the natural-ratio set")
        return synth.natural
    return _cat([synth.positives, synth.negatives])


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
    targets="hard",
):
    """Fit ``classifier`` (a :class:`TimeClassifier`) on ``x_t = x0 + sigma eps`` of the
    synthetic set with the importance-weighted BCE of Eq. (13) (or an ablation); ``targets``
    ``"posterior"``: the labels averaged over which training point made ``x_t``
    (:mod:`genneg.classifier_targets`)."""
    data = training_set(synth, weighting).to(next(classifier.parameters()).device)
    if classifier.granularity == "element" and data.element_labels is None:
        raise ValueError("a per-element classifier needs an oracle that returns element_valid")
    pi1 = float(data.labels.float().mean())
    alpha = synth.alpha
    check_targets(targets, data, classifier.granularity)

    def loss_fn(step):
        n = len(data)
        idx = rng.randint(n, (min(train.batch_size, n),), generator)
        batch = data.index(idx)
        x0, cond = batch.data.x, batch.data.cond
        weights = label_weights(batch.labels, alpha, weighting, pi1)
        sigma = process.sample_classifier_sigma(x0.shape[0], generator, x0.device)
        xt = x0 + broadcast(sigma, x0) * rng.randn(x0.shape, generator, x0.device)
        els = batch.element_labels
        labels = batch.labels
        if targets == "posterior":
            labels = posterior_targets(xt, sigma, x0, labels, weights)

        def mean_fn(rows):  # rows: all of them in one process, this rank's share otherwise
            c = cond_rows(cond, rows)
            return weighted_bce(
                classifier(xt[rows], sigma[rows], **c),
                labels[rows],
                weights[rows],
                element_labels=None if els is None else els[rows],
                mask=c.get("mask"),
            )

        return sharded_mean(mean_fn, x0.shape[0])

    return fit(
        classifier.parameters(),
        loss_fn,
        train,
        desc="classifier",
        progress=progress,
        log=log,
        sharded=True,
    )
