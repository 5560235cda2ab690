"""The GPU sampler case (genneg.bench.gpu), run here on the CPU: its rows, its precision
switches and its correctness columns. No assertion depends on how fast the machine is."""

import math

import pytest
import torch

from genneg.bench import gpu
from genneg.bench.quality import reduce_config
from genneg.bench.report import Report
from genneg.bench.tables import markdown
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.test_sample_cmd import finished_toy_run
from tests.toy_plugin import toy_config


def test_trained_run_is_measured_at_every_precision_with_its_error_against_fp32():
    report = Report()
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    gpu.bench_run_dir(
        finished_toy_run(),
        report,
        registry=registry,
        device="cpu",
        batch=200,
        precisions=("fp32", "bf16"),
        label=200,
        peak_n=64,
        log=lambda m: None,
    )
    rows = {(r["model"], r["precision"]): r for r in report.find("gpu-sampler")}
    assert set(rows) == {(m, p) for m in ("baseline", "iter1") for p in ("fp32", "bf16")}
    for (_, precision), r in rows.items():
        assert r["batch"] == 200 and r["labelled"] == 200
        assert r["nfe_per_sample"] == 2 * r["steps"] - 1  # Heun: one Euler last step
        assert r["achieved_flops"] == pytest.approx(
            r["flops_per_eval"] * r["sample_evals_per_s"], rel=1e-9
        )
        assert r["fraction_of_matmul_peak"] == pytest.approx(
            r["achieved_flops"] / report.meta["gpu_sampler"]["matmul_peaks"][precision]
        )
        assert r["datasheet_peak"] is None  # no datasheet for a CPU
        assert 0.0 <= r["infraction"] <= 1.0 and r["infraction_se"] > 0
    # the guided model's evaluation includes the classifier's input gradient
    assert rows["iter1", "fp32"]["flops_per_eval"] > rows["baseline", "fp32"]["flops_per_eval"]
    assert rows["iter1", "fp32"]["classifiers"] == 1
    for model in ("baseline", "iter1"):
        fp32, bf16 = rows[model, "fp32"], rows[model, "bf16"]
        assert fp32["eval_rel_error_vs_fp32"] == 0.0 and fp32["infraction_diff_in_se"] is None
        # bf16 keeps 8 mantissa bits: the evaluation moves, by a fraction of a percent
        assert 1e-5 < bf16["eval_rel_error_vs_fp32"] < 0.05
        assert bf16["infraction_fp32"] == fp32["infraction"]
        assert math.isfinite(bf16["infraction_diff_in_se"])
    assert "**GPU sampler**" in markdown(report)


def test_precision_mode_sets_and_restores_the_tf32_switches():
    saved = torch.backends.cuda.matmul.allow_tf32
    with gpu.precision_mode("tf32", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with gpu.precision_mode("bf16", "cpu"):
        assert not torch.backends.cuda.matmul.allow_tf32
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    assert torch.backends.cuda.matmul.allow_tf32 == saved
    with pytest.raises(ValueError, match="precision must be one of"):
        with gpu.precision_mode("fp8"):
            pass


def test_datasheet_peaks_by_device_name():
    assert gpu.datasheet_peak("NVIDIA H200", "bf16") == pytest.approx(989.4e12)
    assert gpu.datasheet_peak("NVIDIA H100 80GB HBM3", "tf32") == pytest.approx(494.7e12)
    assert gpu.datasheet_peak("Some Laptop GPU", "fp32") is None


def test_relative_rms():
    b = torch.tensor([3.0, 4.0])
    assert gpu.relative_rms(b, b) == 0.0
    assert gpu.relative_rms(torch.tensor([3.0, 5.0]), b) == pytest.approx(0.2)


def test_reduced_quality_run_goes_to_the_bench_device():
    assert reduce_config(toy_config()).device == "cpu"
    assert reduce_config(toy_config(), device="cuda").device == "cuda"
