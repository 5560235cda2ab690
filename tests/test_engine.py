import json

import pytest
import torch

from genneg.components import DataSplit
from genneg.config import SynthConfig
from genneg.engine import runner
from genneg.engine.labelling import label_batch
from genneg.engine.rundir import CheckpointError, load_checkpoint
from genneg.engine.runner import run
from genneg.engine.synth import draw_labelled
from genneg.errors import ClassTooRareError, RunError
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import HalfPlane, toy_config


@pytest.fixture
def registry():
    return build_registry({"toy": toy_plugin}, autoload=False)


def test_end_to_end_toy_run(tmp_path, registry):
    rows = run(toy_config(), tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline", "iter1", "iter2", "distill"]
    for name in (
        "config.toml",
        "log.txt",
        "metrics.jsonl",
        "state.json",
        "results.md",
        "plots/curves.png",
        "plots/samples_iter1.png",
        "ckpt/iter2.pt",
    ):
        assert (tmp_path / "r" / name).exists(), name
    synth = [
        json.loads(line)
        for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
        if '"synth"' in line
    ]
    assert len(synth) == 2 and all(0 < s["alpha"] < 1 for s in synth)
    assert rows[1]["n_classifiers"] == 1 and rows[2]["n_classifiers"] == 2
    assert rows[0]["nfe_per_sample"] == 15  # Heun: 2 * 8 - 1 evaluations
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    # E log N(x; 0, 0.25) per dim = -0.5 ln(2 pi 0.25) - 0.5 = -0.726 (200 points)
    assert results["data_log_density"] == pytest.approx(-0.726, abs=0.1)


def test_resume_after_interruption_gives_the_same_results(tmp_path, registry, monkeypatch):
    reference = run(toy_config(), tmp_path / "ref", registry=registry, progress=False, quiet=True)

    real = runner.train_classifier
    calls = {"n": 0}

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_classifier", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run(toy_config(), tmp_path / "r", registry=registry, progress=False, quiet=True)
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert state["done"] == ["baseline", "iter1"]
    monkeypatch.setattr(runner, "train_classifier", real)
    with pytest.raises(RunError, match="--resume"):
        run(toy_config(), tmp_path / "r", registry=registry, progress=False, quiet=True)
    resumed = run(
        toy_config(), tmp_path / "r", resume=True, registry=registry, progress=False, quiet=True
    )
    assert [r["stage"] for r in resumed] == [r["stage"] for r in reference]
    for a, b in zip(resumed, reference):
        assert a["infraction"] == b["infraction"] and a["elbo"] == pytest.approx(b["elbo"])


def test_resume_with_another_config_names_the_difference(tmp_path, registry):
    run(toy_config(iterations=0), tmp_path / "r", registry=registry, progress=False, quiet=True)
    with pytest.raises(RunError, match="differs in iterations, seed"):
        run(
            toy_config(iterations=1, seed=3),
            tmp_path / "r",
            resume=True,
            registry=registry,
            progress=False,
            quiet=True,
        )


def test_resume_of_a_run_from_before_a_new_config_key(tmp_path, registry):
    """A config.toml written before a key existed resumes if the key is at its default."""
    run(toy_config(iterations=0), tmp_path / "r", registry=registry, progress=False, quiet=True)
    path = tmp_path / "r" / "config.toml"
    old = path.read_text().replace('element_loss = "per-element"\n', "")
    assert old != path.read_text()
    path.write_text(old)
    run(toy_config(iterations=0), tmp_path / "r", resume=True, registry=registry, quiet=True)
    assert 'element_loss = "per-element"' in path.read_text()


def test_corrupt_checkpoint_is_reported_on_resume(tmp_path, registry):
    run(toy_config(iterations=0), tmp_path / "r", registry=registry, progress=False, quiet=True)
    ckpt = tmp_path / "r" / "ckpt" / "baseline.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(
            toy_config(iterations=0),
            tmp_path / "r",
            resume=True,
            registry=registry,
            progress=False,
            quiet=True,
        )


class Payload:
    pass


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"modules": {}, "thing": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a genneg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_loop_stops_when_the_model_has_no_infractions(tmp_path, registry):
    cfg = toy_config()
    import attrs

    cfg = attrs.evolve(cfg, oracle=attrs.evolve(cfg.oracle, options={"threshold": -100.0}))
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline"]
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    assert "no infractions" in state["stopped"]
    assert "stopping the Gen-neG loop" in (tmp_path / "r" / "log.txt").read_text()


def test_dataset_with_nan_is_rejected(tmp_path, registry):
    import attrs

    cfg = toy_config()
    cfg = attrs.evolve(cfg, dataset=attrs.evolve(cfg.dataset, options={"nan": True}))
    with pytest.raises(ValueError, match="split 'train' has 1 samples with NaN"):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)


def test_unknown_component_option_is_named(tmp_path, registry):
    import attrs

    from genneg.engine.build import BuildError

    cfg = toy_config()
    cfg = attrs.evolve(cfg, denoiser=attrs.evolve(cfg.denoiser, options={"hiden": 3}))
    with pytest.raises(BuildError, match="denoiser: 'mlp' does not accept.*hiden"):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)


class FixedSampler:
    """Hands out pre-made samples in order, like a model would."""

    def __init__(self, x):
        self.x, self.pos, self.batch_size = x, 0, 100

    def sample(self, denoiser, n, generator):
        out = self.x[self.pos : self.pos + n]
        self.pos += n
        return DataSplit(x=out)


def test_alpha_counts_every_drawn_sample():
    """alpha = |D+| / (|D+| + |D-|) over all drawn samples, while the kept set is balanced."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 2, generator=g)
    x[:, 0] = torch.where(torch.rand(5000, generator=g) < 0.1, -1.0, 1.0)  # 10 % invalid
    res = draw_labelled(
        FixedSampler(x),
        None,
        HalfPlane(0.0),
        "half",
        SynthConfig(n_per_class=200, max_samples=5000, min_per_class=10),
        keep_natural=True,
        generator=g,
        progress=False,
    )
    drawn = res.n_drawn
    n_pos_expected = int((x[:drawn, 0] > 0).sum())
    assert res.n_positive == n_pos_expected
    assert res.alpha == pytest.approx(n_pos_expected / drawn)
    assert len(res.positives) == len(res.negatives) == 200
    assert res.positives.labels.all() and not res.negatives.labels.any()
    # drawing stops at the first batch (of 100) after which 200 negatives exist
    neg_after = torch.cumsum((x[:, 0] <= 0).long(), 0)[99::100]
    assert drawn == 100 * (1 + int((neg_after < 200).sum()))
    assert len(res.natural) == 400


def test_keep_positive_keeps_the_valid_samples_drawn_anyway():
    """``synth.keep_positive``: the same draws and stopping point as the balanced set, with
    every valid sample drawn on the way kept (up to the cap), in draw order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 2, generator=g)
    x[:, 0] = torch.where(torch.rand(5000, generator=g) < 0.1, -1.0, 1.0)  # 10 % invalid

    def draw(keep):
        cfg = SynthConfig(n_per_class=200, max_samples=5000, min_per_class=10, keep_positive=keep)
        return draw_labelled(
            FixedSampler(x), None, HalfPlane(0.0), "half", cfg,
            keep_natural=False, generator=g, progress=False,
        )  # fmt: skip

    plain, more, capped = draw(0), draw(10_000), draw(1000)
    assert more.n_drawn == plain.n_drawn and more.alpha == plain.alpha
    assert torch.equal(more.negatives.data.x, plain.negatives.data.x)
    valid_drawn = x[: more.n_drawn][x[: more.n_drawn, 0] > 0]
    assert len(more.positives) == more.n_positive == len(valid_drawn) > 1000
    assert torch.equal(more.positives.data.x, valid_drawn)
    assert torch.equal(capped.positives.data.x, valid_drawn[:1000])
    assert torch.equal(plain.positives.data.x, valid_drawn[:200])


def test_balanced_minibatches_draw_half_of_each_class():
    from genneg.engine.synth import LabelledSet
    from genneg.engine.train import _row_sampler

    labels = torch.zeros(1000, dtype=torch.bool)
    labels[:950] = True  # 95 % positives
    data = LabelledSet(data=DataSplit(x=torch.randn(1000, 2)), labels=labels, element_labels=None)
    g = torch.Generator().manual_seed(0)
    rows = _row_sampler(data, 64, "balanced", g)()
    assert len(rows) == 64 and int(labels[rows].sum()) == 32
    assert len(_row_sampler(data, 64, "uniform", g)()) == 64
    with pytest.raises(ValueError, match="both labels"):
        only = LabelledSet(data=data.data, labels=torch.ones(1000, dtype=torch.bool),
                           element_labels=None)  # fmt: skip
        _row_sampler(only, 64, "balanced", g)


def test_budget_without_negatives_stops_with_a_message():
    x = torch.ones(1000, 2)
    with pytest.raises(ClassTooRareError, match="only 0 infracting samples in 1000 drawn"):
        draw_labelled(
            FixedSampler(x),
            None,
            HalfPlane(0.0),
            "half",
            SynthConfig(n_per_class=200, max_samples=1000, min_per_class=10),
            keep_natural=False,
            generator=None,
            progress=False,
        )


def test_nonfinite_samples_are_never_labelled_valid():
    x = torch.ones(4, 2)
    x[1, 0] = float("nan")
    x[2, 1] = float("inf")
    labelled = label_batch(HalfPlane(0.0), "half", DataSplit(x=x))
    assert labelled.finite.tolist() == [True, False, False, True] and len(labelled.samples) == 2
    assert labelled.valid.tolist() == [True, False, False, True]
    assert labelled.counts() == (2, 0, 2)
    from genneg.engine.evaluate import infraction_metrics

    metrics = infraction_metrics(HalfPlane(0.0), labelled)
    assert metrics["infraction"] == pytest.approx(50.0)
    assert metrics["categories"]["non-finite"]["rate"] == pytest.approx(50.0)


def test_oracle_with_wrong_shape_is_named():
    class Bad(HalfPlane):
        def label(self, x, cond):
            r = super().label(x, cond)
            return type(r)(valid=r.valid[:-1])

    with pytest.raises(ValueError, match="oracle 'bad': valid has shape"):
        label_batch(Bad(), "bad", DataSplit(x=torch.ones(3, 2)))


def test_unavailable_device_is_a_clear_error(tmp_path, registry, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RunError, match="no CUDA device"):
        run(
            toy_config(device="cuda"), tmp_path / "r", registry=registry, progress=False, quiet=True
        )
    with pytest.raises(RunError, match="not a torch device"):
        run(
            toy_config(device="gpu0"), tmp_path / "s", registry=registry, progress=False, quiet=True
        )


def test_synthetic_set_reports_where_its_time_goes():
    """``SynthResult.timings()``: wall time in the sampler and in the oracle, each measured
    around its own calls (a slow sampler and a slow oracle show up on their own side)."""
    import time as _time

    class SlowSampler(FixedSampler):
        def sample(self, denoiser, n, generator):
            _time.sleep(0.02)
            return super().sample(denoiser, n, generator)

    class SlowOracle(HalfPlane):
        def label(self, x, cond):
            _time.sleep(0.005)
            return super().label(x, cond)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    cfg = SynthConfig(n_per_class=100, max_samples=2000, min_per_class=10)
    synth = draw_labelled(
        SlowSampler(x), None, SlowOracle(0.0), "half", cfg,
        keep_natural=False, generator=g, progress=False,
    )  # fmt: skip
    rounds = synth.n_drawn // 100
    t = synth.timings()
    assert t["sampling_seconds"] >= 0.02 * rounds
    assert 0.005 * rounds <= t["labelling_seconds"] < t["sampling_seconds"]
    assert "sampling_seconds" not in synth.summary()  # the counts alone: comparable across runs


def test_distillation_points_add_the_chosen_models_samples(tmp_path, registry):
    """``distill.samples``: the training rows, then that many samples of the baseline or of the
    guided teacher, drawn by the synthetic sets' sampler under the training conditions; 0 keeps
    the paper's training split; non-finite samples are dropped and counted in the log."""
    import attrs

    from genneg import Experiment
    from genneg.engine.distill import distillation_points

    def experiment(**distill):
        cfg = toy_config()
        cfg = attrs.evolve(cfg, distill=attrs.evolve(cfg.distill, **distill))
        return Experiment(cfg, registry=registry)

    exp = experiment()
    assert distillation_points(exp, [], torch.Generator().manual_seed(1)) is exp.splits.train
    logs = []
    for source in ("baseline", "teacher"):
        exp = experiment(samples=300, samples_from=source)
        torch.manual_seed(0)
        clfs = [exp.new_classifier().eval().requires_grad_(False)]
        points = distillation_points(exp, clfs, torch.Generator().manual_seed(1), logs.append)
        train = exp.splits.train
        assert len(points) == len(train) + 300
        torch.testing.assert_close(points.x[: len(train)], train.x)
        model = exp.base if source == "baseline" else exp.guided(clfs)
        want = exp.synth_sampler.sample(model, 300, torch.Generator().manual_seed(1))
        torch.testing.assert_close(points.x[len(train) :], want.x)
        assert f"300 samples of the {source}" in logs[-1]
    base_points = distillation_points(
        experiment(samples=300), clfs, torch.Generator().manual_seed(1)
    )
    assert not torch.allclose(base_points.x[-300:], points.x[-300:])  # the teacher guides

    exp = experiment(samples=4)
    bad = DataSplit(x=torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 1.0], [2.0, 0.0]]))
    exp.__dict__["synth_sampler"] = type("Fixed", (), {"sample": lambda self, m, n, g: bad})()
    points = distillation_points(exp, [], None, logs.append)
    torch.testing.assert_close(points.x[-3:], bad.x[[0, 2, 3]])
    assert "1 non-finite dropped" in logs[-1]


def test_distill_samples_config_is_checked():
    from genneg.config import DistillConfig

    with pytest.raises(ValueError, match="samples_from"):
        DistillConfig(samples_from="data")
    with pytest.raises(ValueError, match="samples"):
        DistillConfig(samples=-1)


def test_run_distils_on_the_added_samples(tmp_path, registry):
    import attrs

    cfg = toy_config(iterations=1)
    cfg = attrs.evolve(cfg, distill=attrs.evolve(cfg.distill, samples=200))
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert rows[-1]["stage"] == "distill"
    log = (tmp_path / "r" / "log.txt").read_text()
    assert "and 200 samples of the baseline" in log
