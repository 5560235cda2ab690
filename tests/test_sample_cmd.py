"""``genneg sample RUN_DIR``: loading a finished run's stages, --valid-only and its budget."""

import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from genneg import Experiment
from genneg.cli import cli
from genneg.commands.sample import default_stage, draw_valid
from genneg.config import EvalConfig
from genneg.engine.runner import run
from genneg.plugins import build_registry, set_registry
from tests import toy_plugin
from tests.toy_plugin import HalfPlane, toy_config

_RUNS = []


def finished_toy_run() -> Path:
    """A small finished toy run (baseline, iter1, distill), made once per test process and
    shared with tests/test_bench.py."""
    if not _RUNS:
        tmp = tempfile.TemporaryDirectory(prefix="genneg-toy-run-")
        reg = build_registry({"toy": toy_plugin}, autoload=False)
        cfg = toy_config(
            iterations=1,
            eval=EvalConfig(n_samples=400, elbo_k=2, elbo_points=50, plot_samples=50),
        )
        run(cfg, Path(tmp.name) / "run", registry=reg, progress=False, quiet=True)
        _RUNS.append(tmp)  # kept alive (and the directory with it) until the process ends
    return Path(_RUNS[0].name) / "run"


@pytest.fixture
def toy_run():
    return finished_toy_run()


@pytest.fixture(autouse=True)
def toy_registry():
    set_registry(build_registry({"toy": toy_plugin}, autoload=False))


def sample(*args):
    return CliRunner().invoke(cli, ["sample", *map(str, args)])


def test_default_stage():
    assert default_stage(["baseline", "iter1", "iter2", "distill"]) == "distill"
    assert default_stage(["baseline", "iter1", "iter2"]) == "iter2"
    assert default_stage(["baseline"]) == "baseline"


@pytest.mark.parametrize("stage", ["baseline", "iter1", "distill"])
def test_valid_only_returns_only_valid_samples(toy_run, tmp_path, stage):
    out = tmp_path / "s.pt"
    result = sample(toy_run, "--stage", stage, "-n", 200, "--valid-only", "--out", out)
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["x"].shape == (200, 2) and saved["valid"].all()
    assert HalfPlane().label(saved["x"], {}).valid.all()  # the oracle agrees, independently
    assert saved["draws"] >= 200 and saved["stage"] == stage
    assert f"200 valid samples from {saved['draws']} draws" in result.output


def test_without_valid_only_infractions_are_kept_and_reported(toy_run, tmp_path):
    out = tmp_path / "s.pt"
    result = sample(toy_run, "--stage", "baseline", "-n", 300, "--out", out)
    assert result.exit_code == 0, result.output
    saved = torch.load(out, weights_only=True)
    assert saved["x"].shape == (300, 2) and saved["draws"] == 300
    assert torch.equal(saved["valid"], HalfPlane().label(saved["x"], {}).valid)
    assert "% infracting" in result.output


def test_draws_count_what_the_oracle_rejected(toy_run):
    exp = Experiment.from_run_dir(toy_run)
    gen = torch.Generator().manual_seed(0)
    split, valid, draws = draw_valid(
        exp, exp.load_stage("baseline"), 100, gen, valid_only=True, max_draws=10_000, batch_size=37
    )
    assert len(split) == 100 and valid.all() and draws >= 100
    assert default_stage(exp.finished_stages()) == "distill"


def test_budget_exceeded_is_a_clear_error(toy_run):
    result = sample(toy_run, "-n", 50, "--valid-only", "--max-draws", 10)
    assert result.exit_code != 0
    assert "--max-draws=10" in result.output and "valid samples in 10 draws" in result.output


def test_unfinished_stage_and_non_run_directory(toy_run, tmp_path):
    result = sample(toy_run, "--stage", "iter2")
    assert result.exit_code != 0 and "not finished" in result.output
    result = sample(tmp_path)
    assert result.exit_code != 0 and "not a genneg run directory" in result.output
