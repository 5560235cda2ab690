"""The roofline case (genneg.bench.roofline): its FLOP count against closed forms, its rows and
its projection of a run. No assertion depends on how fast the machine is."""

import pytest
import torch
from torch import nn

from genneg.bench import roofline
from genneg.bench.report import Report
from genneg.bench.tables import markdown
from genneg.guidance import GuidedDenoiser, TimeClassifier
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import MLP, MLPClassifier, toy_config


def test_flops_of_a_linear_layer_forward_and_backward():
    layer = nn.Linear(16, 8)
    x = torch.randn(10, 16, requires_grad=True)
    assert roofline._counted(lambda: layer(x)) == 2 * 10 * 16 * 8
    # backward: the input's gradient and the weight's, each as many products as the forward
    assert roofline._counted(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 16 * 8


def test_flops_of_a_guided_evaluation_follow_autograd_grad():
    """The guidance term is an input gradient (``torch.autograd.grad``): its backward pass
    through the classifier is counted, the weights' gradients are not computed."""
    from genneg.diffusion.edm import EDMConfig, EDMProcess

    torch.manual_seed(0)
    process = EDMProcess(EDMConfig())
    base = MLP(hidden=32).requires_grad_(False)
    net = MLPClassifier(hidden=32).requires_grad_(False)
    clf = TimeClassifier(net, process)
    guided = GuidedDenoiser(base, [clf], 1.0)
    n = 50
    x, sigma = torch.randn(n, 2), torch.full((n,), 0.7)
    hidden = 2 * n * (3 * 32 + 32 * 32)  # the first two layers' products
    base_flops = hidden + 2 * n * 32 * 2
    clf_forward = hidden + 2 * n * 32 * 1
    # the input gradient: every layer's input-side product once more (the weights need none)
    assert roofline._counted(lambda: guided(x, sigma)) == base_flops + 2 * clf_forward


def test_roofline_rows_and_the_runs_projection():
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config()
    report = Report()
    rows = roofline.bench_roofline("toy", cfg, registry, report, repeat=2)
    steps = [r["step"] for r in rows]
    assert steps == [
        "baseline-train",
        "classifier-train",
        "distill-train",
        "guided-eval-0",
        "guided-eval-1",
        "guided-eval-2",
    ]
    by = {r["step"]: r for r in rows}
    assert by["baseline-train"]["run_steps"] == cfg.baseline.steps
    assert by["classifier-train"]["run_steps"] == cfg.classifier.train.steps * cfg.iterations
    assert by["distill-train"]["run_steps"] == cfg.distill.train.steps
    # the batch each step really ran on: the preset's, at most the 400 toy training rows
    assert by["guided-eval-0"]["batch"] == min(cfg.sampling.batch_size, 400)
    assert by["baseline-train"]["batch"] == min(cfg.baseline.batch_size, 400)
    # a guided evaluation does more arithmetic with every classifier stacked
    assert (
        by["guided-eval-0"]["flops"] < by["guided-eval-1"]["flops"] < by["guided-eval-2"]["flops"]
    )
    # the teacher of the distillation step is the 2-classifier guided model: its step costs
    # more than a baseline training step of the same network
    per_row = {k: by[k]["flops"] / by[k]["batch"] for k in ("baseline-train", "distill-train")}
    assert per_row["distill-train"] > per_row["baseline-train"]
    for r in rows:
        assert r["achieved_flops"] == pytest.approx(r["flops"] / r["seconds"])
        assert r["fraction_of_layer_matmul"] == pytest.approx(
            r["achieved_flops"] / r["layer_matmul_flops"]
        )
    (run,) = report.find("roofline-run")
    trained = [r for r in rows if r["run_steps"]]
    assert run["training_seconds"] == pytest.approx(
        sum(r["run_steps"] * r["seconds"] for r in trained)
    )
    assert run["training_flops"] == sum(r["run_steps"] * r["flops"] for r in trained)
    assert run["floor_seconds"] == pytest.approx(
        sum(r["run_steps"] * r["flops"] / r["layer_matmul_flops"] for r in trained)
    )
    assert "**Against the matmul rate**" in markdown(report)


def test_layer_matmul_rate_is_positive():
    assert roofline.layer_matmul_flops(64, 32, repeat=2) > 0
