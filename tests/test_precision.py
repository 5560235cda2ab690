"""Model evaluations at a reduced precision (genneg.precision, ``sampling.precision``)."""

import copy
import math

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genneg.components import DataSplit
from genneg.config import SamplingConfig
from genneg.diffusion import samplers
from genneg.diffusion.edm import EDMProcess
from genneg.engine.runner import run
from genneg.engine.sampling import ModelSampler
from genneg.plugins import build_registry
from genneg.precision import AtPrecision, at_precision, native_bf16, resolve_precision
from tests import toy_plugin
from tests.gaussian import GaussianData
from tests.toy_plugin import toy_config


class MatmulGaussianDenoiser(nn.Module):
    """The exact denoiser of N(mu, s^2 I), its ``x`` term a matrix product (so autocast runs
    it in bf16): ``x @ (a I) + (1 - a) mu`` with ``a = s^2 / (s^2 + sigma^2)``."""

    def __init__(self, data: GaussianData):
        super().__init__()
        self.data = data
        self.register_buffer("eye", torch.eye(data.dim))
        self.calls_dtypes = []

    def forward(self, x, sigma, **cond):
        s2 = self.data.s**2
        sg = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
        a = s2 / (s2 + sg**2)
        y = F.linear(x, self.eye)  # bf16 under autocast
        self.calls_dtypes.append(y.dtype)
        return a * y + (1 - a) * self.data.mu


def _sample(denoiser, process, steps=40, n=20_000, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = process.sample_prior((n, 2), g)
    return samplers.edm_heun(denoiser, x, process.sampling_sigmas(steps), generator=g)


def test_bf16_sampling_recovers_the_gaussian_and_stays_close_to_fp32():
    """Sampled with its products in bf16, N(0.3, 0.7^2) still has its mean and std, the
    samples are float32 and differ from float32's (same noise) by bf16's rounding, not
    more: relative RMS above 0 and below 1 %."""
    data, process = GaussianData(mu=0.3, s=0.7, dim=2), EDMProcess()
    exact = MatmulGaussianDenoiser(data)
    ref = _sample(exact, process)
    assert set(exact.calls_dtypes) == {torch.float32}
    low = AtPrecision(MatmulGaussianDenoiser(data), "bf16")
    out = _sample(low, process)
    assert set(low.model.calls_dtypes) == {torch.bfloat16}
    assert out.dtype == torch.float32
    se_mean = data.s / math.sqrt(out.numel())
    assert abs(out.mean().item() - data.mu) < 5 * se_mean
    assert out.std().item() == pytest.approx(data.s, rel=0.03)
    rel = float((out - ref).norm() / ref.norm())
    assert 0 < rel < 0.01


def test_at_precision_fp32_is_the_model_itself_and_the_wrapper_passes_attributes():
    model = nn.Linear(2, 2)
    model.classifiers = ["c1", "c2"]
    assert at_precision(model, "fp32") is model
    wrapped = at_precision(model, "bf16")
    assert isinstance(wrapped, AtPrecision) and wrapped.classifiers == ["c1", "c2"]
    assert list(wrapped.parameters()) == list(model.parameters())
    with pytest.raises(ValueError, match="precision must be one of"):
        AtPrecision(model, "fp8")
    copied = copy.deepcopy(wrapped)  # no recursion through the attribute fallback
    assert copied.precision == "bf16" and copied.classifiers == ["c1", "c2"]
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute


def test_resolve_precision_auto_follows_the_hardware_and_rejects_unknown_names():
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("tf32", "cpu") == "tf32"
    with pytest.raises(ValueError, match="precision must be one of .*'fp16'"):
        resolve_precision("fp16", "cpu")


def test_config_rejects_an_unknown_precision():
    with pytest.raises(ValueError, match="precision"):
        SamplingConfig(precision="half")


def test_model_sampler_evaluates_at_its_precision():
    data = GaussianData(mu=0.3, s=0.7, dim=2)
    denoiser = MatmulGaussianDenoiser(data)
    process = EDMProcess()
    conds = DataSplit(x=torch.zeros(4, 2))
    sampler = ModelSampler(samplers.edm_heun, process, 8, {}, conds, 256, "bf16")
    out = sampler.sample(denoiser, 300, torch.Generator().manual_seed(0))
    assert out.x.shape == (300, 2) and out.x.dtype == torch.float32
    assert set(denoiser.calls_dtypes) == {torch.bfloat16}


def test_a_run_at_bf16_finishes_with_the_table_of_fp32_within_its_errors(tmp_path):
    """The toy run end to end with ``sampling.precision = "bf16"`` (synthetic sets,
    evaluation samples, distillation teacher): every stage's infraction within 4 standard
    errors of the float32 run's, its ELBO (float32 in both) within 0.05 nats/dim."""
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config()
    low = attrs.evolve(cfg, sampling=attrs.evolve(cfg.sampling, precision="bf16"))
    ref = run(cfg, tmp_path / "fp32", registry=registry, progress=False, quiet=True)
    out = run(low, tmp_path / "bf16", registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in out] == [r["stage"] for r in ref]
    assert out[0]["elbo"] == ref[0]["elbo"]  # the baseline: trained and scored in float32
    for a, b in zip(out, ref):
        se = math.hypot(a["infraction_se"], b["infraction_se"])
        assert abs(a["infraction"] - b["infraction"]) <= 4 * se + 1e-9, a["stage"]
        assert a["elbo"] == pytest.approx(b["elbo"], abs=0.05), a["stage"]


def test_mixed_precision_training_runs_the_forward_in_bf16_and_learns_the_same_fit():
    """``TrainConfig.precision = "bf16"``: the forward pass's products in bf16, the weights and
    the loss float32; a least-squares fit reaches the float32 fit's loss within 2 %."""
    from genneg.config import TrainConfig
    from genneg.engine.train import fit

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    losses, dtypes = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        net = nn.Linear(8, 1)
        seen = []

        def loss_fn(step, net=net, seen=seen):
            pred = net(x)
            seen.append(pred.dtype)
            return F.mse_loss(pred.float(), y)

        cfg = TrainConfig(steps=600, batch_size=512, lr=3e-2, log_every=100, precision=precision)
        losses[precision] = fit(net.parameters(), loss_fn, cfg, desc="t", progress=False)[-1][1]
        dtypes[precision] = set(seen)
        assert net.weight.dtype == torch.float32
    assert dtypes == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["fp32"] < 0.02  # the noise floor is 0.01
