import math

import pytest
import torch

from genneg.losses import joint_element_bce, label_weights, weighted_bce


def bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def _sig(logit):
    return 1 / (1 + math.exp(-logit))


def test_eq13_by_hand():
    """Eq. (13): (1/N) sum_{D+} alpha BCE + (1/N) sum_{D-} (1 - alpha) BCE on N = 2 + 2."""
    alpha = 0.9
    logits = torch.tensor([1.5, -0.3, 0.7, -2.0])
    labels = torch.tensor([True, True, False, False])
    weights = label_weights(labels, alpha, "is")
    got = weighted_bce(logits, labels, weights).item()
    n = 2
    want = (alpha * (bce(1.5, 1) + bce(-0.3, 1)) + (1 - alpha) * (bce(0.7, 0) + bce(-2.0, 0))) / n
    # the mean over 2N samples of weights 2 alpha / 2 (1 - alpha) equals Eq. 13 exactly
    assert got == pytest.approx(want, rel=1e-6)


def test_ablation_weights():
    labels = torch.tensor([True, False, False])
    assert torch.equal(label_weights(labels, 0.95, "no-is"), torch.ones(3))
    assert torch.equal(label_weights(labels, 0.95, "imbalanced"), torch.ones(3))
    # an unbalanced proposal pi: weights alpha / pi1 and (1 - alpha) / pi0 (Eq. 33)
    w = label_weights(labels, 0.8, "is", pi1=1 / 3)
    assert torch.allclose(w, torch.tensor([0.8 * 3, 0.2 * 1.5, 0.2 * 1.5]))


def test_per_element_loss_sums_agents_and_uses_scene_weight():
    logits = torch.tensor([[0.2, -1.0, 5.0]])
    el = torch.tensor([[True, False, True]])
    mask = torch.tensor([[True, True, False]])
    w = torch.tensor([0.4])
    got = weighted_bce(logits, torch.tensor([False]), w, element_labels=el, mask=mask).item()
    assert got == pytest.approx(0.4 * (bce(0.2, 1) + bce(-1.0, 0)), rel=1e-6)


def test_importance_weighted_optimum_is_the_model_prior():
    """Minimising Eq. (13) for an x-independent logit recovers C = alpha (the Bayes-optimal
    classifier of Eq. 8 with the model's prior), not the balanced set's 1/2."""
    alpha = 0.97
    labels = torch.tensor([True] * 500 + [False] * 500)
    logit = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([logit], lr=0.05)
    w = label_weights(labels, alpha, "is")
    for _ in range(1500):
        loss = weighted_bce(logit.expand(1000), labels, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.sigmoid(logit).item() == pytest.approx(alpha, abs=2e-3)


def test_bad_weighting_and_alpha():
    with pytest.raises(ValueError, match="weighting"):
        label_weights(torch.tensor([True]), 0.5, "magic")
    with pytest.raises(ValueError, match="alpha"):
        label_weights(torch.tensor([True]), 1.5, "is")
    with pytest.raises(ValueError, match="both labels"):
        label_weights(torch.tensor([True]), 0.5, "is", pi1=1.0)


def test_joint_element_loss_by_hand():
    """``element_loss="joint"``: Eq. (13) for C = prod over real elements of sigmoid(f_a),
    on the scene label; element labels are not read."""
    logits = torch.tensor([[0.2, -1.0, 5.0], [1.5, 0.3, -7.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    labels = torch.tensor([True, False])
    w = torch.tensor([0.4, 1.6])
    got = weighted_bce(logits, labels, w, mask=mask, element_loss="joint").item()
    c0, c1 = _sig(0.2) * _sig(-1.0), _sig(1.5) * _sig(0.3)
    want = (0.4 * -math.log(c0) + 1.6 * -math.log(1 - c1)) / 2
    assert got == pytest.approx(want, rel=1e-6)
    assert joint_element_bce(logits, labels, w, mask=mask).item() == pytest.approx(want, rel=1e-6)


def test_joint_element_loss_of_one_element_is_the_sample_bce():
    logits = torch.tensor([2.0, -0.5, 0.1, -3.0])
    labels = torch.tensor([True, False, True, False])
    w = torch.tensor([1.0, 0.5, 2.0, 0.3])
    joint = weighted_bce(logits[:, None], labels, w, element_loss="joint")
    assert joint.item() == pytest.approx(weighted_bce(logits, labels, w).item(), rel=1e-6)


def test_joint_element_loss_is_finite_for_confident_elements():
    """A negative scene whose every element is confidently valid: a large but finite loss whose
    gradient pushes the logits down."""
    logits = torch.tensor([[40.0, 40.0], [-300.0, 0.0]], requires_grad=True)
    loss = joint_element_bce(logits, torch.tensor([False, False]), torch.ones(2))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert (logits.grad[0] > 0).all()


def test_bad_element_loss():
    with pytest.raises(ValueError, match="element_loss"):
        weighted_bce(torch.zeros(1, 2), torch.tensor([True]), torch.ones(1), element_loss="max")
    with pytest.raises(ValueError, match="per-element logits"):
        joint_element_bce(torch.zeros(3), torch.tensor([True] * 3), torch.ones(3))
