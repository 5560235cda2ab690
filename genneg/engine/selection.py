"""Best-on-held-out selection of a classifier's weights (``classifier.select = "holdout"``).

A classifier trained for a fixed number of steps on a small synthetic set can overfit it: on
SUMO traffic (docs/traffic.md) the by-agent classifier's held-out weighted BCE (Eq. 13) is
0.82 after 2000 steps and 1.19 after 6000, above the 0.69 of a constant at most noise levels,
and its guidance costs the r-ELBO accordingly. With selection, every ``train.log_every`` steps
the classifier's loss of Eq. (13) is computed on the held-out part of its synthetic set
(``classifier.holdout``) with the same noise levels and noise each time (a generator reset to
one seed: the checks differ only by the weights), and the weights of the best check are the
classifier's at the end. It is early stopping on the quantity training minimises, measured on
model samples the classifier never trained on; the per-noise-level diagnostics then read the
same held-out set, so they describe the selected classifier with a slight optimism.
"""

from __future__ import annotations

import math

import torch

from genneg import distributed
from genneg.engine.synth import LabelledSet

SELECTIONS = ("last", "holdout")


class HeldOutSelection:
    """Called as ``fit``'s ``on_window(step, train_loss)``: scores ``classifier`` on ``held``
    (a :class:`LabelledSet`, repeated ``replicas`` times so that each scene is seen at several
    noise levels) with ``loss`` (a :class:`genneg.losses.ClassifierLoss`) and keeps a copy of
    the best weights; :meth:`restore` loads them."""

    def __init__(self, classifier, held: LabelledSet, loss, *, replicas: int = 8, seed: int = 0):
        if len(held) == 0:
            raise ValueError("held-out selection needs a non-empty held-out set")
        if replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        self.classifier, self.loss, self.seed = classifier, loss, seed
        self.data = LabelledSet.cat([held] * replicas)
        self.history: list[tuple[int, float]] = []
        self.best_step, self.best_value, self._best_state = 0, math.inf, None

    @torch.no_grad()
    def score(self) -> float:
        """The held-out loss of the classifier's current weights (the same draws every time)."""
        was_training = self.classifier.training
        self.classifier.eval()
        gen = torch.Generator().manual_seed(self.seed)
        d = self.data
        value = self.loss(self.classifier, d.data.x, d.data.cond, d.labels, d.element_labels, gen)
        self.classifier.train(was_training)
        return distributed.all_reduce_sum([float(value)])[0]  # ranks hold shares of the mean

    def __call__(self, step: int, train_loss: float) -> None:
        value = self.score()
        self.history.append((step, value))
        if value < self.best_value:
            self.best_step, self.best_value = step, value
            self._best_state = {
                k: v.detach().clone() for k, v in self.classifier.state_dict().items()
            }

    def restore(self) -> None:
        """Load the best weights seen (no-op before the first check)."""
        if self._best_state is not None:
            self.classifier.load_state_dict(self._best_state)
