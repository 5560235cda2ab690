"""Best-on-held-out selection of a classifier's weights (genneg.engine.selection): the
kept weights are those of the best check, the checks are repeatable, bad configurations are
clear errors. The synthetic set is the Gaussian/halfspace one of test_classifier_quality."""

import pytest
import torch

from genneg.config import ClassifierConfig, ComponentSpec, TrainConfig
from genneg.diagnostics import hold_out
from genneg.engine.selection import HeldOutSelection
from genneg.engine.train import train_classifier
from genneg.guidance import TimeClassifier
from genneg.losses import ClassifierLoss
from tests.test_classifier_quality import SmallClassifier, synthetic_set


@pytest.fixture(scope="module")
def split():
    process, synth = synthetic_set()
    synth, held = hold_out(synth, 0.2, torch.Generator().manual_seed(2))
    return process, synth, held


def _held_loss(process, synth, held):
    pi1 = float(held.labels.float().mean())
    return ClassifierLoss(process, alpha=synth.alpha, weighting="is", pi1=pi1)


def test_a_check_is_repeatable_and_the_best_weights_are_restored(split):
    process, synth, held = split
    torch.manual_seed(0)
    clf = TimeClassifier(SmallClassifier(), process)
    chooser = HeldOutSelection(clf, held, _held_loss(process, synth, held), replicas=2)
    first = chooser.score()
    assert chooser.score() == first  # same weights, same draws: the same number
    chooser(10, 0.0)
    good = {k: v.clone() for k, v in clf.state_dict().items()}
    with torch.no_grad():  # worse weights: every logit pushed far to one side
        clf.network.net[-1].bias.add_(25.0)
    chooser(20, 0.0)
    assert chooser.history[1][1] > chooser.history[0][1]
    assert chooser.best_step == 10 and chooser.best_value == first
    chooser.restore()
    for k, v in clf.state_dict().items():
        assert torch.equal(v, good[k])


def test_training_with_holdout_selection_keeps_the_best_check(split):
    process, synth, held = split
    torch.manual_seed(1)
    clf = TimeClassifier(SmallClassifier(), process)
    logs = []
    train_classifier(
        clf,
        synth,
        weighting="is",
        process=process,
        train=TrainConfig(steps=300, batch_size=256, lr=3e-3, log_every=50),
        generator=torch.Generator().manual_seed(3),
        progress=False,
        log=logs.append,
        select="holdout",
        held=held,
    )
    (line,) = [m for m in logs if "kept the weights of step" in m]
    checks = [
        (int(s), float(v))
        for s, v in (part.split(": ") for part in line.split("by step: ")[1][:-1].split(", "))
    ]
    assert [s for s, _ in checks] == [50, 100, 150, 200, 250, 300]
    best_step, best = min(checks, key=lambda c: c[1])
    assert f"step {best_step} " in line
    # the classifier now holds the best check's weights: its score is that check's
    rescore = HeldOutSelection(clf, held, _held_loss(process, synth, held))
    assert rescore.score() == pytest.approx(best, rel=1e-4)
    # and it learnt: better than the untrained network on the same draws
    torch.manual_seed(1)
    untrained = HeldOutSelection(
        TimeClassifier(SmallClassifier(), process), held, _held_loss(process, synth, held)
    )
    assert best < untrained.score() - 0.05


def test_bad_selection_settings_are_clear_errors(split):
    process, synth, held = split
    clf = TimeClassifier(SmallClassifier(), process)
    kw = dict(weighting="is", process=process, train=TrainConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="needs a held-out set"):
        train_classifier(clf, synth, generator=torch.Generator(), select="holdout", **kw)
    with pytest.raises(ValueError, match="not their average"):
        ema = TrainConfig(steps=1, ema=0.9)
        train_classifier(
            clf,
            synth,
            weighting="is",
            process=process,
            train=ema,
            generator=torch.Generator(),
            select="holdout",
            held=held,
        )
    with pytest.raises(ValueError, match="select must be one of"):
        train_classifier(clf, synth, generator=torch.Generator(), select="best", **kw)
    with pytest.raises(ValueError, match="needs classifier.holdout > 0"):
        ClassifierConfig(network=ComponentSpec(name="mlp"), select="holdout")
    cfg = ClassifierConfig(network=ComponentSpec(name="mlp"), select="holdout", holdout=0.1)
    assert cfg.loss_options()["select"] == "holdout"
