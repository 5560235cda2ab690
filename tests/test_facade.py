"""The public facade (:class:`genneg.Experiment`) and the edge errors of issue 10: every part
of a run comes from one place, and bad input is one clear line."""

import ast
import inspect
import json
from pathlib import Path

import attrs
import pytest
import torch
from click.testing import CliRunner

import genneg
from genneg import CheckpointError, ConfigError, DataError, Experiment, RunError
from genneg.cli import cli
from genneg.components import NoiseProcess
from genneg.config import ProcessSpec, SamplingConfig, TrainConfig, resolve
from genneg.diffusion.edm import DEFAULT_STEPS, EDMProcess
from genneg.diffusion.vp import VPConfig, VPProcess
from genneg.engine.rundir import load_checkpoint
from genneg.engine.runner import run
from genneg.plugins import build_registry, set_registry
from tests import toy_plugin
from tests.test_cli import use_toy_registry
from tests.test_sample_cmd import finished_toy_run
from tests.toy_plugin import toy_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry():
    reg = build_registry({"toy": toy_plugin}, autoload=False)
    set_registry(reg)
    return reg


# --- the facade ---


def test_load_stage_rebuilds_every_stage_of_a_finished_run(registry):
    exp = Experiment.from_run_dir(finished_toy_run())
    assert exp.finished_stages() == ["baseline", "iter1", "distill"]
    guided = exp.load_stage("iter1")
    assert len(guided.classifiers) == 1 and guided.base is exp.base
    payload = load_checkpoint(exp.checkpoint("iter1"))
    for key, value in payload["modules"]["classifier"].items():
        assert torch.equal(guided.classifiers[0].state_dict()[key], value)
    student = exp.load_stage("distill")
    assert not any(p.requires_grad for p in student.parameters()) and not student.training
    samples = exp.sample(student, 50, torch.Generator().manual_seed(0))
    labelled = exp.label(samples)
    assert labelled.valid.shape == (50,) and len(labelled.samples) == 50
    with pytest.raises(RunError, match=r"stage 'iter2' is not finished .*baseline, iter1"):
        exp.load_stage("iter2")
    with pytest.raises(RunError, match="no stage named 'final'"):
        exp.load_stage("final")


def test_a_checkpoint_without_the_weights_asked_for_is_a_checkpoint_error(registry, tmp_path):
    run_dir = tmp_path / "r"
    src = finished_toy_run()
    for name in ("config.toml", "state.json", "metrics.jsonl"):
        (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes((src / name).read_bytes())
    for stage in ("baseline", "iter1", "distill"):
        (run_dir / "ckpt" / f"{stage}.pt").write_bytes((src / "ckpt" / f"{stage}.pt").read_bytes())
    # the classifier's checkpoint swapped for a denoiser's: no 'classifier' entry
    (run_dir / "ckpt" / "iter1.pt").write_bytes((src / "ckpt" / "baseline.pt").read_bytes())
    exp = Experiment.from_run_dir(run_dir)
    with pytest.raises(CheckpointError, match=r"iter1.pt has no 'classifier' weights \(it has: "):
        exp.load_stage("iter1")


def test_a_run_directory_whose_data_went_bad_is_a_data_error(tmp_path, monkeypatch):
    """``genneg sample`` checks the splits as ``genneg run`` does (it used to skip them)."""
    nan_data = toy_plugin.ToyData(nan=True)
    reg = build_registry({"toy": toy_plugin}, autoload=False)
    set_registry(reg)
    monkeypatch.setitem(
        reg.entries["datasets"],
        "toy",
        attrs.evolve(reg.entries["datasets"]["toy"], obj=lambda: nan_data),
    )
    with pytest.raises(DataError, match="split 'train' has 1 samples with NaN"):
        Experiment.from_run_dir(finished_toy_run())
    out = CliRunner().invoke(cli, ["sample", str(finished_toy_run()), "-n", "5"])
    assert out.exit_code != 0 and "NaN" in out.output and "Traceback" not in out.output


def test_parts_are_built_on_first_use(registry):
    exp = Experiment(toy_config(), registry=registry)
    assert "splits" not in exp.__dict__  # nothing loaded yet
    den = exp.new_denoiser()
    assert den(torch.zeros(3, 2), torch.ones(3)).shape == (3, 2)
    assert "splits" not in exp.__dict__


def test_evaluation_samples_are_drawn_under_the_configured_splits_conditions(registry):
    """``eval.condition_split`` picks the split whose ``cond`` the evaluation samples are drawn
    under (held-out maps for traffic); the synthetic sets keep the training conditions."""
    from genneg.components import DataSplit, Splits
    from genneg.config import EvalConfig

    def split(n, tag):
        return DataSplit(x=torch.zeros(n, 2), cond={"tag": torch.full((n,), tag)})

    splits = Splits(train=split(30, 0.0), val=split(10, 1.0), test=split(20, 2.0))
    for name, tag in (("train", 0.0), ("val", 1.0), ("test", 2.0)):
        ev = EvalConfig(n_samples=10, elbo_k=2, elbo_points=10, condition_split=name)
        exp = Experiment(toy_config(eval=ev), registry=registry)
        exp.__dict__["splits"] = splits
        model = exp.new_denoiser()
        drawn = exp.sample(model, 25, torch.Generator().manual_seed(0))
        assert drawn.x.shape == (25, 2) and torch.all(drawn.cond["tag"] == tag)
        synth = exp.synth_sampler.sample(model, 7, torch.Generator().manual_seed(0))
        assert torch.all(synth.cond["tag"] == 0.0)
    assert EvalConfig().condition_split == "train"
    with pytest.raises(ValueError, match="condition_split"):
        EvalConfig(condition_split="holdout")


# --- the noise-process protocol ---


@pytest.mark.parametrize(
    "process", [EDMProcess(), VPProcess(VPConfig(timesteps=50, schedule="linear"))]
)
def test_both_processes_satisfy_the_noise_process_protocol(process):
    assert isinstance(process, NoiseProcess)
    for name in ("sampling_sigmas", "sample_training_sigma", "sample_classifier_sigma"):
        ours = inspect.signature(getattr(process, name)).parameters
        spec = inspect.signature(getattr(NoiseProcess, name)).parameters
        assert list(ours) == [p for p in spec if p != "self"], name
    default = process.sampling_sigmas()  # no steps: the process' default
    assert default[-1] == 0 and (default[:-1] > 0).all()
    assert torch.all(default[:-1].diff() < 0)
    expected = DEFAULT_STEPS if process.kind == "edm" else 50
    assert len(default) == expected + 1
    assert torch.equal(process.sampling_sigmas(None), default)
    g = torch.Generator().manual_seed(0)
    sig = process.sample_training_sigma(7, g)
    assert sig.shape == (7,) and (sig > 0).all() and process.loss_weight(sig).shape == (7,)
    assert process.sample_prior((4, 2), g).std() > 1


def test_an_edm_preset_with_the_process_default_steps_runs(registry, tmp_path):
    """``sampling.steps = 0`` is documented as "the process' default"; EDM used to raise a
    TypeError for it."""
    cfg = toy_config(
        iterations=0,
        sampling=SamplingConfig(sampler="edm-heun", steps=0, batch_size=500),
        baseline=TrainConfig(steps=5, batch_size=400, lr=3e-3, log_every=5),
    )
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert rows[0]["nfe_per_sample"] == 2 * DEFAULT_STEPS - 1  # Heun: 35 evaluations


# --- edge errors, one line each ---


def test_a_malformed_toml_config_is_one_line_naming_file_and_line(tmp_path):
    use_toy_registry()
    bad = tmp_path / "bad.toml"
    bad.write_text("iterations = 2\nclassifier.weighting = \n")
    out = CliRunner().invoke(cli, ["run", "toy", "--config", str(bad), "--dry-run"])
    assert out.exit_code != 0
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
    assert "bad.toml is not valid TOML" in out.output and "line 2" in out.output


def test_a_fractional_integer_is_refused_not_truncated():
    use_toy_registry()
    out = CliRunner().invoke(cli, ["run", "toy", "--dry-run", "--set", "baseline.steps=2.5"])
    assert out.exit_code != 0
    assert "config.baseline.steps" in out.output and "expected an integer, got 2.5" in out.output
    with pytest.raises(ConfigError, match="expected true or false"):
        resolve(toy_config(), (), ['distill.enabled="no"'])
    assert resolve(toy_config(), (), ["baseline.steps=1e3"]).baseline.steps == 1000


def test_a_checkpoint_with_pickled_code_names_it_and_gives_no_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"modules": {}, "extra": Path("/tmp")}, path)  # a pathlib object: not tensors
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "refusing to load" in message and "pathlib" in message
    assert "weights_only=False" not in message and "likely succeed" not in message
    assert "weights_only` set to `False`" not in message


def test_resumed_rows_look_like_fresh_ones(registry, tmp_path):
    cfg = toy_config(iterations=1)
    out = tmp_path / "r"
    fresh = run(cfg, out, registry=registry, progress=False, quiet=True)
    first = json.loads((out / "results.json").read_text())["rows"]
    again = run(cfg, out, resume=True, registry=registry, progress=False, quiet=True)
    resumed = json.loads((out / "results.json").read_text())["rows"]
    assert [set(r) for r in resumed] == [set(r) for r in first]
    assert "event" not in resumed[0] and "time" not in resumed[0]
    assert again == fresh


# --- the API surface ---


def test_plugins_import_only_the_public_api():
    """Plugin packages (not their tests) import ``genneg`` itself (or a module it declares
    public in ``__all__``, such as ``genneg.stacking``), never its internals."""
    public = {f"genneg.{n}" for n in genneg.__all__ if inspect.ismodule(getattr(genneg, n))}
    offenders = []
    for path in sorted((ROOT / "plugins").glob("*/genneg_*/**/*.py")) + sorted(
        (ROOT / "examples").glob("*/genneg_*/**/*.py")
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("genneg."):
                if node.module not in public:
                    offenders.append(f"{path.relative_to(ROOT)}: from {node.module}")
            if isinstance(node, ast.Import):
                offenders += [a.name for a in node.names if a.name.startswith("genneg.")]
    assert "genneg.stacking" in public and "genneg.engine" not in public
    assert offenders == []


def test_the_public_api_is_declared_and_importable():
    for name in genneg.__all__:
        assert getattr(genneg, name) is not None, name
    assert {"Experiment", "hookimpl", "run", "Oracle", "RunConfig"} <= set(genneg.__all__)


def test_runner_is_algorithm_1_only():
    assert len((ROOT / "genneg" / "engine" / "runner.py").read_text().splitlines()) <= 250


def test_process_spec_default_builds(registry):
    exp = Experiment(toy_config(process=ProcessSpec(kind="edm")), registry=registry)
    assert isinstance(exp.process, NoiseProcess)
