"""The classifier loss's score term (:func:`genneg.losses.guided_denoising_change`): it is the
guided model's change of denoising loss, its minimiser over valid data is the Bayes classifier
(the optimum of Eq. 13, Theorem 1's guidance), training with it still reaches the Bayes
classifier, and bad settings are clear errors."""

import pytest
import torch

from genneg.components import index_cond
from genneg.config import ClassifierConfig, ComponentSpec
from genneg.diffusion.edm import EDMProcess
from genneg.diffusion.shapes import broadcast
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.losses import ClassifierLoss, guided_denoising_change
from tests.test_classifier_quality import (  # noqa: F401
    DATA,
    SmallClassifier,
    trained,
    trained_classifier,
    worst_bayes_error,
)


class ScaledBayes(torch.nn.Module):
    """``log C = log Phi(a m / sqrt(v))``: the Bayes classifier of the half-line at ``a = 1``,
    a sharper (``a > 1``) or flatter (``a < 1``) one otherwise."""

    granularity = "sample"

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def log_prob(self, x, sigma, **cond):
        mean = DATA.denoiser(x, sigma)[:, 0]  # x0 | x ~ N(mean, var), as in ``bayes``
        return torch.special.log_ndtr(self.a * mean / torch.sqrt(DATA.posterior_var(sigma)))


def test_score_term_is_the_guided_models_change_of_denoising_loss():
    torch.manual_seed(0)
    clf = TimeClassifier(SmallClassifier(), EDMProcess()).eval()
    x0 = DATA.sample(256, torch.Generator().manual_seed(1))
    sigma = torch.exp(torch.linspace(-3, 2, 256))
    xt = x0 + sigma[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2))
    guided = GuidedDenoiser(DATA.denoiser, [clf], batched=False)
    with torch.no_grad():
        plain_err = ((DATA.denoiser(xt, sigma) - x0) ** 2).sum(1)
        guided_err = ((guided(xt, sigma) - x0) ** 2).sum(1)
    expected = 0.5 * (guided_err - plain_err) / sigma**2  # 1/2 |eps - eps_hat|^2 change
    got = guided_denoising_change(clf, DATA.denoiser, xt, x0, sigma, {})
    torch.testing.assert_close(got.detach(), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.1, 0.4, 1.5])
def test_score_term_over_valid_data_is_least_for_the_bayes_classifier(sigma):
    """Mean over valid samples (common noise): the Bayes classifier (a = 1) has the least
    change, and it is a gain (guidance towards the truncated base lowers the denoising loss
    of valid data); sharper or flatter classifiers lose some of it."""
    g = torch.Generator().manual_seed(3)
    x0 = DATA.sample(400_000, g)
    x0 = x0[x0[:, 0] > 0]
    s = torch.full((len(x0),), sigma)
    xt = x0 + sigma * torch.randn(x0.shape, generator=g)
    scales = [0.5, 0.8, 1.0, 1.25, 2.0]
    means = {
        a: float(
            guided_denoising_change(ScaledBayes(a), DATA.denoiser, xt, x0, s, {}).detach().mean()
        )
        for a in scales
    }
    assert min(means, key=means.get) == 1.0, means
    assert means[1.0] < 0, means
    assert means[0.5] - means[1.0] > 1e-3 and means[2.0] - means[1.0] > 1e-3, means


def test_training_with_the_score_term_reaches_the_bayes_classifier(trained):  # noqa: F811
    process, synth, _, _ = trained
    clf = trained_classifier(process, synth, steps=1000, score_weight=1.0, model=DATA.denoiser)
    assert worst_bayes_error(process, clf) < 0.05


class ElementNet(torch.nn.Module):
    """Per-element logits ``[B, N]`` of ``x [B, N, 2]``, with parameters."""

    granularity = "element"

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 1)
        )

    def forward(self, x_in, c_noise, **cond):
        noise = c_noise[:, None, None].expand(-1, x_in.shape[1], 1)
        return self.net(torch.cat([x_in, noise], dim=-1)).squeeze(-1)


def _element_case():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(24, 4, 2, generator=g)
    mask = torch.rand(24, 4, generator=g) < 0.7
    mask[:, 0] = True
    labels = torch.rand(24, generator=g) < 0.4
    element_labels = labels[:, None] | (torch.rand(24, 4, generator=g) < 0.5)
    return x0, {"mask": mask}, labels, element_labels


def _sample_case():
    g = torch.Generator().manual_seed(6)
    x0 = DATA.sample(24, g)
    return x0, {}, x0[:, 0] > 0, None


@pytest.mark.parametrize("case", ["sample", "element"])
def test_classifier_loss_adds_the_score_term_over_the_valid_rows(case):
    """``ClassifierLoss(score_weight=w)`` is Eq. (13)'s BCE plus ``w`` times the valid rows'
    :func:`guided_denoising_change`, summed and divided by ``n pi1``, in value and in the
    classifier's parameter gradients (one forward pass of the valid rows serves both)."""
    torch.manual_seed(0)
    x0, cond, labels, element_labels = _sample_case() if case == "sample" else _element_case()
    clf = TimeClassifier(SmallClassifier() if case == "sample" else ElementNet(), EDMProcess())
    model = DATA.denoiser if case == "sample" else (lambda x, sigma, **c: 0.8 * x)
    w, pi1 = 0.7, 0.5

    def loss_and_grads(weight):
        loss = ClassifierLoss(EDMProcess(), alpha=0.6, pi1=pi1, score_weight=weight, model=model)
        clf.zero_grad()
        value = loss(clf, x0, cond, labels, element_labels, torch.Generator().manual_seed(7))
        value.backward()
        return value.detach(), [p.grad.clone() for p in clf.parameters()]

    # the same noise draw as the loss's (its generator, seed 7)
    g = torch.Generator().manual_seed(7)
    sigma = EDMProcess().sample_classifier_sigma(len(x0), g, x0.device)
    xt = x0 + broadcast(sigma, x0) * torch.randn(x0.shape, generator=g)
    valid = labels.nonzero().squeeze(1)
    c_valid = index_cond(cond, valid)
    clf.zero_grad()
    term = guided_denoising_change(clf, model, xt[valid], x0[valid], sigma[valid], c_valid)
    term = term.sum() / (len(x0) * pi1)
    term.backward()
    term_grads = [p.grad.clone() for p in clf.parameters()]
    bce, bce_grads = loss_and_grads(0.0)
    total, total_grads = loss_and_grads(w)
    assert 0 < len(valid) < len(x0)
    torch.testing.assert_close(total, bce + w * term.detach(), rtol=1e-5, atol=1e-6)
    for got, b, t in zip(total_grads, bce_grads, term_grads):
        torch.testing.assert_close(got, b + w * t, rtol=1e-4, atol=1e-6)


def test_score_term_settings_are_checked():
    with pytest.raises(ValueError, match="needs model="):
        ClassifierLoss(EDMProcess(), alpha=0.5, score_weight=1.0)
    with pytest.raises(ValueError, match="score_weight must be >= 0"):
        ClassifierLoss(EDMProcess(), alpha=0.5, score_weight=-1.0, model=DATA.denoiser)
    with pytest.raises(ValueError, match="score_weight"):
        ClassifierConfig(network=ComponentSpec(name="mlp"), score_weight=-0.5)


# --- the score term on training data (classifier.score_on) ---


def _data_split(n=64, seed=8):
    from genneg.components import DataSplit

    x0 = DATA.sample(4 * n, torch.Generator().manual_seed(seed))
    return DataSplit(x=x0[x0[:, 0] > 0][:n], cond={})  # "real" scenes are valid


@pytest.mark.parametrize("score_on", ["data", "both"])
def test_classifier_loss_charges_the_score_term_on_training_data(score_on):
    """``score_on="data"``: Eq. (13)'s BCE plus ``w`` times the mean
    :func:`guided_denoising_change` on ``round(pi1 B)`` rows of ``score_data`` noised at the
    classifier's levels (drawn after the minibatch's noise, from the same generator);
    ``"both"`` adds the valid rows' term as well; in value and in parameter gradients."""
    from genneg import rng

    torch.manual_seed(0)
    x0, cond, labels, _ = _sample_case()
    data, model, w, pi1 = _data_split(), DATA.denoiser, 0.7, 0.5
    clf = TimeClassifier(SmallClassifier(), EDMProcess())

    def loss_and_grads(**options):
        loss = ClassifierLoss(EDMProcess(), alpha=0.6, pi1=pi1, model=model, **options)
        clf.zero_grad()
        value = loss(clf, x0, cond, labels, None, torch.Generator().manual_seed(7))
        value.backward()
        return value.detach(), [p.grad.clone() for p in clf.parameters()]

    g = torch.Generator().manual_seed(7)
    EDMProcess().sample_classifier_sigma(len(x0), g, x0.device)
    torch.randn(x0.shape, generator=g)  # the minibatch's levels and noise come first
    n = round(pi1 * len(x0))
    rows = rng.randint(len(data), (n,), g)
    sigma = EDMProcess().sample_classifier_sigma(n, g, x0.device)
    xt = data.x[rows] + broadcast(sigma, data.x[rows]) * rng.randn(data.x[rows].shape, g)
    clf.zero_grad()
    term = guided_denoising_change(clf, model, xt, data.x[rows], sigma, {}).mean()
    term.backward()
    term_grads = [p.grad.clone() for p in clf.parameters()]
    base_options = {"score_weight": w} if score_on == "both" else {}
    base, base_grads = loss_and_grads(**base_options)
    total, total_grads = loss_and_grads(score_weight=w, score_on=score_on, score_data=data)
    torch.testing.assert_close(total, base + w * term.detach(), rtol=1e-5, atol=1e-6)
    for got, b, t in zip(total_grads, base_grads, term_grads):
        torch.testing.assert_close(got, b + w * t, rtol=1e-4, atol=1e-6)


def test_training_with_the_score_term_on_data_reaches_the_bayes_classifier(trained):  # noqa: F811
    """The term on valid data of the base (here: the base truncated to the valid set, as
    real scenes are valid) has Theorem 1's gradient as its optimum, like Eq. (13)."""
    process, synth, _, _ = trained
    clf = trained_classifier(
        process, synth, steps=1000, score_weight=1.0, model=DATA.denoiser,
        score_on="data", score_data=_data_split(n=20_000),
    )  # fmt: skip
    assert worst_bayes_error(process, clf) < 0.05


def test_score_on_settings_are_checked():
    with pytest.raises(ValueError, match="unknown score_on 'real'"):
        ClassifierLoss(EDMProcess(), alpha=0.5, score_on="real")
    with pytest.raises(ValueError, match="score_on = 'data' needs score_data"):
        ClassifierLoss(EDMProcess(), alpha=0.5, score_weight=1.0, model=DATA.denoiser,
                       score_on="data")  # fmt: skip
    with pytest.raises(ValueError, match="score_on"):
        ClassifierConfig(network=ComponentSpec(name="mlp"), score_on="real")
    with pytest.raises(ValueError, match="score_weight = 0 turns off"):
        ClassifierConfig(network=ComponentSpec(name="mlp"), score_on="data")
    cfg = ClassifierConfig(network=ComponentSpec(name="mlp"), score_weight=0.5, score_on="both")
    assert cfg.loss_options()["score_on"] == "both"
