"""Faults: a real ``SIGKILL`` of a running ``genneg run`` process, then ``--resume``; an oracle
that breaks mid-run; a dataset too small to use. Each ends with a clear error (or a finished
run) and loses no finished stage."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest
import torch

from genneg import hookimpl
from genneg.components import OracleResult
from genneg.config import ComponentSpec
from genneg.engine.rundir import load_checkpoint
from genneg.engine.runner import run
from genneg.engine.synth import OracleError
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import HalfPlane, toy_config

ROOT = Path(toy_plugin.__file__).resolve().parent.parent  # the checkout holding tests/

# A toy run whose classifier stage lasts a few seconds, so there is time to kill it there.
SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import attrs
from genneg.config import TrainConfig
from genneg.engine.runner import run
from genneg.plugins import build_registry
from tests import toy_plugin

cfg = toy_plugin.toy_config(iterations=1)
cfg = attrs.evolve(
    cfg,
    classifier=attrs.evolve(
        cfg.classifier, train=TrainConfig(steps=4000, batch_size=256, lr=3e-3, log_every=50)
    ),
)
registry = build_registry({{"toy": toy_plugin}}, autoload=False)
run(cfg, sys.argv[1], resume="--resume" in sys.argv, registry=registry, progress=False,
    quiet=True)
"""


def _events(path: Path, event: str) -> list[dict]:
    lines = (path / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _state(path: Path) -> dict:
    try:
        return json.loads((path / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"done": []}


def test_sigkill_mid_run_then_resume_keeps_finished_stages(tmp_path):
    script = tmp_path / "toy_run.py"
    script.write_text(textwrap.dedent(SCRIPT.format(root=str(ROOT))))
    out = tmp_path / "r"
    env = {**os.environ, "GENNEG_DISABLE_PLUGIN_AUTOLOAD": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    try:
        deadline = time.monotonic() + 120
        while "baseline" not in _state(out)["done"]:
            assert proc.poll() is None, "the run ended before its baseline was done"
            assert time.monotonic() < deadline, "the baseline took too long"
            time.sleep(0.02)
        time.sleep(0.5)  # well inside iter1 (sampling or classifier training)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _state(out)["done"] == ["baseline"]
    assert not (out / "ckpt" / "iter1.pt").exists()
    baseline_ckpt = (out / "ckpt" / "baseline.pt").read_bytes()
    load_checkpoint(out / "ckpt" / "baseline.pt")  # complete, not a partial write

    resumed = subprocess.run(
        [sys.executable, str(script), str(out), "--resume"], env=env, timeout=300
    )
    assert resumed.returncode == 0
    assert _state(out)["done"] == ["baseline", "iter1", "distill"]
    assert (out / "ckpt" / "baseline.pt").read_bytes() == baseline_ckpt  # not retrained
    trained = [r["stage"] for r in _events(out, "train")]
    assert trained == ["baseline", "iter1", "distill"]  # the killed iter1 left no record
    assert "baseline: loaded from checkpoint" in (out / "log.txt").read_text()
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["stage"] for r in rows] == ["baseline", "iter1", "distill"]


class FlakyOracle(HalfPlane):
    """The toy oracle, which misbehaves from its third call on (after the shape check and
    the baseline's evaluation) as ``GENNEG_TEST_ORACLE`` says: ``raise`` on batches holding
    a sample with x > 0.8, or return ``float`` labels."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def label(self, x, cond):
        self.calls += 1
        result = super().label(x, cond)
        mode = os.environ.get("GENNEG_TEST_ORACLE", "ok") if self.calls > 2 else "ok"
        if mode == "raise" and bool((x[:, 0] > 0.8).any()):
            raise ValueError("cannot parse this scene")
        if mode == "float":
            return OracleResult(valid=result.valid.float(), categories=result.categories)
        return result


class FlakyPlugin:
    @hookimpl
    def register_oracles(self, register):
        register("flaky", FlakyOracle)


@pytest.fixture
def registry():
    return build_registry({"toy": toy_plugin, "flaky": FlakyPlugin()}, autoload=False)


@pytest.mark.parametrize(
    "mode, message",
    [
        ("raise", r"oracle 'flaky' raised .*ValueError: cannot parse this scene"),
        ("float", r"oracle 'flaky': valid must be a bool tensor, got torch.float32"),
    ],
)
def test_broken_oracle_is_named_and_finished_stages_survive(
    tmp_path, registry, monkeypatch, mode, message
):
    cfg = toy_config(iterations=1, oracle=ComponentSpec(name="flaky"))
    cfg = attrs.evolve(cfg, eval=attrs.evolve(cfg.eval, n_samples=400, elbo_points=50))
    out = tmp_path / "r"
    monkeypatch.setenv("GENNEG_TEST_ORACLE", mode)
    with pytest.raises(OracleError, match=message):
        run(cfg, out, registry=registry, progress=False, quiet=True)
    assert _state(out)["done"] == ["baseline"]
    baseline = load_checkpoint(out / "ckpt" / "baseline.pt")["modules"]["denoiser"]

    monkeypatch.setenv("GENNEG_TEST_ORACLE", "ok")  # the oracle fixed: resume
    rows = run(cfg, out, resume=True, registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline", "iter1", "distill"]
    reloaded = load_checkpoint(out / "ckpt" / "baseline.pt")["modules"]["denoiser"]
    assert all(torch.equal(baseline[k], reloaded[k]) for k in baseline)
    assert [r["stage"] for r in _events(out, "train")] == ["baseline", "iter1", "distill"]


@pytest.mark.parametrize("n", [0, 1])
def test_dataset_with_too_few_points_is_a_clear_error(tmp_path, registry, n):
    cfg = toy_config(dataset=ComponentSpec(name="toy", options={"n": n}))
    with pytest.raises(ValueError, match=r"dataset split 'train' (is empty|has only 1 point)"):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert _state(tmp_path / "r")["done"] == []
