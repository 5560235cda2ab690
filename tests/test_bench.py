"""The benchmark suite: structure of its results, the rejection formula, plugin cases.

No assertion here depends on how fast the machine is."""

import json
import math
import os

import pytest

from genneg import hookimpl
from genneg.bench import rejection
from genneg.bench.domain import DomainSizes
from genneg.bench.quality import reduce_config
from genneg.bench.suite import preset_families, run_suite
from genneg.bench.tables import markdown
from genneg.plugins import build_registry
from genneg.precision import native_bf16
from tests import toy_plugin
from tests.test_sample_cmd import finished_toy_run
from tests.toy_plugin import toy_config

SIZES = DomainSizes(
    oracle_batch=32,
    naive_batch=4,
    sample_batch=8,
    sample_steps=2,
    stacks=(1, 2),
    train_batch=16,
    train_steps=1,
    repeat=1,
)


class ThirdParty:
    """A plugin from elsewhere: a small preset, a paper-size one and a benchmark case."""

    calls = []

    @hookimpl
    def register_presets(self, register):
        register("toy", toy_config)
        register("toy-paper", lambda: toy_config(name="toy-paper"))

    @hookimpl
    def register_benchmarks(self, register):
        def case(report):
            ThirdParty.calls.append(report)
            report.add("toy-case", answer=42, seconds=0.5)

        register("toy-case", case)


@pytest.fixture
def registry():
    return build_registry({"toy": toy_plugin, "third": ThirdParty()}, autoload=False)


@pytest.fixture
def toy_run():
    return finished_toy_run()


@pytest.mark.parametrize(
    "epsilon, delta, n",
    [
        (0.1, 1e-3, 3),  # log(1e-3) / log(0.1) is 3.0000000000000004 in floats
        (0.1, 1e-9, 9),
        (0.5, 1e-3, 10),  # 9.97
        (0.01, 1e-6, 3),
        (0.9, 1e-3, 66),  # 65.56
        (0.2, 0.5, 1),  # 0.43: one draw already does
        (0.0, 1e-9, 1),
        (1.0, 1e-3, math.inf),
    ],
)
def test_parallel_samples(epsilon, delta, n):
    assert rejection.parallel_samples(epsilon, delta) == n
    if 0 < epsilon < 1:  # N is the least number of draws with P(all invalid) <= delta
        assert epsilon**n <= delta * (1 + 1e-9)
        assert n == 1 or epsilon ** (n - 1) > delta


def test_parallel_samples_rejects_bad_arguments():
    for eps, delta in ((0.5, 0.0), (0.5, 1.0), (-0.1, 0.5), (1.1, 0.5)):
        with pytest.raises(ValueError):
            rejection.parallel_samples(eps, delta)


def test_compare_costs_per_valid_sample():
    rows = rejection.compare(
        [
            {
                "model": "baseline",
                "infraction": 50.0,
                "nfe_per_sample": 15,
                "seconds_per_sample": 0.01,
                "oracle_seconds_per_sample": 0.001,
            },
            {"model": "distill", "infraction": 0.0, "nfe_per_sample": 15},
            {"model": "broken", "infraction": 100.0, "nfe_per_sample": 15},
        ]
    )
    base, dist, broken = rows
    assert base["draws_per_valid"] == 2 and base["nfe_per_valid"] == 30
    assert base["seconds_per_valid"] == pytest.approx(0.022)
    assert base["parallel"] == {"0.001": 10, "1e-06": 20, "1e-09": 30}
    assert dist["parallel"]["1e-09"] == 1 and dist["nfe_per_valid"] == 15
    assert broken["draws_per_valid"] == math.inf and broken["parallel"]["0.001"] == math.inf


def test_families_skip_paper_presets(registry):
    assert preset_families(registry) == {"third": "toy"}
    assert preset_families(registry, only=["toy-paper"]) == {"third": "toy-paper"}


def test_reduce_config_scales_down():
    cfg = reduce_config(toy_config(), fraction=0.5)
    assert cfg.baseline.steps == 75 and cfg.classifier.train.steps == 50
    assert cfg.distill.enabled and cfg.iterations == 2 and cfg.device == "cpu"


def test_suite_structure_plugin_case_and_rejection(registry, toy_run, tmp_path):
    ThirdParty.calls.clear()
    report = run_suite(registry=registry, sizes=SIZES, run_dirs=[toy_run], log=lambda m: None)
    assert report.errors == []
    assert len(ThirdParty.calls) == 1 and ThirdParty.calls[0] is report
    (case,) = report.find("toy-case")
    assert case["plugin"] == "third" and case["answer"] == 42

    (oracle,) = report.find("oracle", preset="toy")
    assert oracle["samples_per_s"] > 0 and oracle["vectorised_speedup"] > 0
    sampler = {r["model"]: r for r in report.find("sampler", preset="toy")}
    bf16 = ["baseline-bf16", "stack2-bf16"] if native_bf16("cpu") else []
    assert list(sampler) == ["baseline", "stack1", "stack2", "stack2-loop", "distilled", *bf16]
    for name in bf16:  # the same arithmetic, its products in bf16
        fp32 = sampler[name.removesuffix("-bf16")]
        assert sampler[name]["flops_per_eval"] == fp32["flops_per_eval"]
        assert sampler[name]["cost_vs_baseline"] > 0
    assert sampler["baseline"]["cost_vs_baseline"] == 1.0
    assert sampler["baseline"]["nfe_per_sample"] == 3  # Heun, 2 steps
    # a classifier's gradient costs FLOPs; the student has the baseline's architecture
    assert sampler["stack2"]["flops_per_eval"] > sampler["stack1"]["flops_per_eval"]
    assert sampler["stack1"]["flops_per_eval"] > sampler["baseline"]["flops_per_eval"] > 0
    assert sampler["distilled"]["flops_per_eval"] == sampler["baseline"]["flops_per_eval"]
    assert all(0 < r["fraction_of_peak"] for r in sampler.values())
    assert {r["model"] for r in report.find("train")} == {
        "denoiser", "classifier", "distill (target_reuse 1)", "distill (target_reuse 4)",
    }  # fmt: skip

    quality = report.find("quality", preset="toy")
    assert [r["stage"] for r in quality] == ["baseline", "iter1", "distill"]
    assert all(r["source"] == "run directory" for r in quality)
    rej = {r["stage"]: r for r in report.find("rejection", preset="toy")}
    for stage, q in zip(rej, quality):
        eps = q["infraction"] / 100
        assert rej[stage]["epsilon"] == pytest.approx(eps)
        assert rej[stage]["parallel"]["1e-06"] == rejection.parallel_samples(eps, 1e-6)
        assert rej[stage]["nfe_per_valid"] == pytest.approx(q["nfe_per_sample"] / (1 - eps))
    assert rej["iter1"]["flops_per_valid"] > 0

    js, md = report.write(tmp_path / "out")
    data = json.loads(js.read_text())
    assert set(data) == {"meta", "records", "errors"} and data["meta"]["matmul_flops"] > 0
    table = md.read_text()
    for heading in (
        "**Oracle**",
        "**Sampler**",
        "**Training step**",
        "**Quality**",
        "**Against rejection sampling**",
        "toy-case",
    ):
        assert heading in table
    assert markdown(report) in table


def test_a_failing_case_is_reported_not_fatal(tmp_path):
    class Broken:
        @hookimpl
        def register_benchmarks(self, register):
            register("broken", lambda report: 1 / 0)

    reg = build_registry({"broken": Broken()}, autoload=False)
    report = run_suite(registry=reg, log=lambda m: None)
    assert [e["case"] for e in report.errors] == ["broken"]
    assert "ZeroDivisionError" in report.errors[0]["error"]


def test_threading_case_times_each_setting_alone_and_beside_a_busy_process(monkeypatch):
    """The threading case's structure (fresh worker processes; a few steps, never a time
    threshold), and that the worker really runs with the thread setting it names."""
    from genneg.bench import busy
    from genneg.bench.report import Report

    if (os.cpu_count() or 1) < 2:
        pytest.skip("the case needs two cores")
    report = Report()
    busy.bench_threads(report, steps=3, log=lambda m: None)
    rows = report.find("threads")
    assert [r["setting"] for r in rows] == list(busy.SETTINGS)
    for r in rows:
        assert r["seconds_alone"] > 0 and r["seconds_beside_busy"] > 0
        assert r["slowdown"] == pytest.approx(r["seconds_beside_busy"] / r["seconds_alone"])
        assert r["threads_alone"] >= 1 and r["threads_beside_busy"] >= 1
    by_name = {r["setting"]: r for r in rows}
    assert by_name["one"]["threads_alone"] == 1
    assert by_name["one per core, fixed (torch's default)"]["threads_alone"] == os.cpu_count()
    assert "**Threads**" in markdown(report)
    # the env the worker gets: no thread-count or wait-policy override
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert "OMP_NUM_THREADS" not in busy._worker_env()
    assert "OMP_WAIT_POLICY" not in busy._worker_env()
