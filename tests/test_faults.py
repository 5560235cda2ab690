"""Faults and bad input: a SIGKILLed run resumes, labelling in worker processes gives the
labels of inline labelling, and bad oracles or datasets are clear errors that lose nothing."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import attrs
import pytest
import torch

from genneg import hookimpl
from genneg.components import DataSplit
from genneg.config import SynthConfig
from genneg.engine.labelling import OracleError, OracleLabeller, label_batch
from genneg.engine.rundir import RunDir, atomic_path
from genneg.engine.runner import run
from genneg.engine.synth import draw_labelled
from genneg.errors import DataError
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import HalfPlane, ToyData, toy_config

REPO = Path(__file__).resolve().parents[1]


class Flaky(HalfPlane):
    """Labels like the half-plane until ``broken`` is set and it has been called ``after``
    times; then raises (``mode="raise"``) or returns float labels (``mode="float"``)."""

    broken = True
    calls = 0

    def __init__(self, mode="raise", after=2):
        super().__init__(threshold=-0.3)
        self.mode, self.after = mode, after

    def label(self, x, cond):
        type(self).calls += 1
        if type(self).broken and type(self).calls > self.after:
            if self.mode == "raise":
                raise RuntimeError("polygon self-intersects")
            r = super().label(x, cond)
            return type(r)(valid=r.valid.float(), categories=r.categories)
        return super().label(x, cond)


class WideData(ToyData):
    """Toy data with 3 features (the toy networks take 2) or with very few points."""

    def __init__(self, features=3, n=400):
        super().__init__(n=n)
        self.features = features

    def load(self, root, generator):
        def make():
            return DataSplit(x=0.5 * torch.randn(self.n, self.features, generator=generator))

        from genneg.components import Splits

        return Splits(train=make(), val=make(), test=make())


extras = types.SimpleNamespace(
    register_oracles=hookimpl(lambda register: register("flaky", Flaky)),
    register_datasets=hookimpl(lambda register: register("wide", WideData)),
)


@pytest.fixture
def registry():
    return build_registry({"toy": toy_plugin, "extras": extras}, autoload=False)


def small(**changes):
    cfg = toy_config(iterations=1)
    cfg = attrs.evolve(
        cfg,
        classifier=attrs.evolve(cfg.classifier, train=attrs.evolve(cfg.classifier.train, steps=30)),
        distill=attrs.evolve(cfg.distill, enabled=False),
        eval=attrs.evolve(cfg.eval, n_samples=400, elbo_points=50),
    )
    return attrs.evolve(cfg, **changes)


# --- a real `python -m genneg run` killed with SIGKILL, then resumed ---

PLUGIN = """
import attrs
from genneg import hookimpl
from tests.toy_plugin import *  # noqa: F401,F403 (the toy components' hooks)
from tests.toy_plugin import toy_config


def preset():
    cfg = toy_config(iterations=1)
    train = attrs.evolve(cfg.classifier.train, steps=4000, log_every=100)
    return attrs.evolve(
        cfg,
        classifier=attrs.evolve(cfg.classifier, train=train),
        distill=attrs.evolve(cfg.distill, enabled=False),
        eval=attrs.evolve(cfg.eval, n_samples=400, elbo_points=50),
    )


@hookimpl
def register_presets(register):
    register("toy-kill", preset)
"""


def install_toy_plugin(site: Path) -> dict:
    """Install the toy domain as an entry-point plugin on a PYTHONPATH directory."""
    site.mkdir()
    (site / "genneg_toykill.py").write_text(PLUGIN)
    info = site / "genneg_toykill-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: genneg-toykill\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[genneg]\ntoykill = genneg_toykill\n")
    env = dict(os.environ)
    env.pop("GENNEG_DISABLE_PLUGIN_AUTOLOAD", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
        GENNEG_PLUGINS="toykill",
        OMP_NUM_THREADS="1",
    )
    return env


def test_sigkill_in_training_then_resume_completes(tmp_path):
    env = install_toy_plugin(tmp_path / "site")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "genneg", "run", "toy-kill", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = out / "log.txt"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and "classifier: step" in log.read_text():
            break  # iter1's classifier is training
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "state.json").read_text())["done"] == ["baseline"]
    assert not (out / "ckpt" / "iter1.pt").exists()
    baseline = (out / "ckpt" / "baseline.pt").read_bytes()

    # the kill cut no file: a second kill-free run must not start over without --resume
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode != 0 and "--resume" in again.stderr
    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["baseline", "iter1"]
    assert (out / "ckpt" / "baseline.pt").read_bytes() == baseline  # kept, not retrained
    assert "baseline: loaded from checkpoint" in log.read_text()
    assert "iter1" in (out / "results.md").read_text()
    assert not list(out.rglob(".*tmp*"))


# --- labelling in worker processes ---


def test_oracle_pool_gives_the_labels_of_inline_labelling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1001, 2, generator=g)
    x[7, 0] = float("nan")
    batch = DataSplit(x=x)
    inline = label_batch(HalfPlane(0.1), "half", batch)
    with OracleLabeller(HalfPlane(0.1), "half", workers=2) as pool:
        pooled = pool.label(batch)
        assert torch.equal(inline.finite, pooled.finite)
        assert torch.equal(inline.samples.x, pooled.samples.x)
        assert torch.equal(inline.result.valid, pooled.result.valid)
        assert torch.equal(inline.result.categories["left"], pooled.result.categories["left"])

        class Sampler:
            batch_size = 100

            def __init__(self):
                self.x, self.pos = torch.randn(6000, 2, generator=g), 0

            def sample(self, denoiser, n, generator):
                self.pos += n
                return DataSplit(x=self.x[self.pos - n : self.pos])

        cfg = SynthConfig(n_per_class=150, max_samples=6000, min_per_class=5)
        s1, s2 = Sampler(), Sampler()
        s2.x = s1.x
        kw = dict(keep_natural=True, generator=None, progress=False)
        ref = draw_labelled(s1, None, HalfPlane(0.8), "half", cfg, **kw)
    with OracleLabeller(HalfPlane(0.8), "half", workers=2) as pool:
        got = draw_labelled(s2, None, HalfPlane(0.8), "half", cfg, labeller=pool, **kw)
    assert ref.summary() == got.summary()
    for a, b in ((ref.positives, got.positives), (ref.negatives, got.negatives)):
        assert torch.equal(a.data.x, b.data.x)
    assert torch.equal(ref.natural.data.x, got.natural.data.x)
    assert s2.pos == s1.pos + 100  # the pool sampled one batch ahead, not counted


def test_oracle_raising_in_a_worker_is_named():
    with OracleLabeller(Flaky("raise", after=-1), "flaky", workers=1) as pool:
        with pytest.raises(OracleError, match="oracle 'flaky' raised.*worker.*self-intersects"):
            pool.label(DataSplit(x=torch.ones(5, 2)))


# --- bad oracles: a clear error naming the oracle, finished stages kept ---


@pytest.mark.parametrize(
    "mode, message",
    [
        ("raise", "oracle 'flaky' raised on a batch of .* RuntimeError: polygon self-intersects"),
        ("float", "oracle 'flaky': valid must be a bool tensor, got torch.float32"),
    ],
)
def test_bad_oracle_is_named_and_finished_stages_stay(tmp_path, registry, mode, message):
    Flaky.broken, Flaky.calls = True, 0
    cfg = small(oracle=attrs.evolve(toy_config().oracle, name="flaky", options={"mode": mode}))
    with pytest.raises(OracleError, match=message):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert json.loads((tmp_path / "r" / "state.json").read_text())["done"] == ["baseline"]
    Flaky.broken = False  # the oracle is fixed: the run goes on from iter1
    rows = run(cfg, tmp_path / "r", resume=True, registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline", "iter1"]
    assert "baseline: loaded from checkpoint" in (tmp_path / "r" / "log.txt").read_text()


# --- bad datasets ---


def test_dataset_with_the_wrong_feature_count_is_named(tmp_path, registry):
    cfg = small(dataset=attrs.evolve(toy_config().dataset, name="wide"))
    with pytest.raises(DataError, match=r"dataset 'wide' gives samples of shape \(3,\), which "):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert not (tmp_path / "r" / "ckpt" / "baseline.pt").exists()


def test_dataset_with_too_few_points_is_named(tmp_path, registry):
    cfg = small(dataset=attrs.evolve(toy_config().dataset, name="wide", options={"features": 2}))
    cfg = attrs.evolve(cfg, dataset=attrs.evolve(cfg.dataset, options={"features": 2, "n": 1}))
    with pytest.raises(DataError, match="split 'train' has only 1 point"):
        run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)


def test_stop_without_infractions_reports_the_metrics(tmp_path, registry):
    cfg = small(oracle=attrs.evolve(toy_config().oracle, options={"threshold": -100.0}))
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    stopped = json.loads((tmp_path / "r" / "state.json").read_text())["stopped"]
    assert "no infractions" in stopped
    assert f"baseline has infraction {rows[0]['infraction']:.2f}" in stopped
    assert f"elbo {rows[0]['elbo']:.4f}" in stopped


# --- files ---


def test_cut_metrics_line_is_skipped_and_the_next_record_kept(tmp_path, registry):
    cfg = small(iterations=0)
    run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    metrics = tmp_path / "r" / "metrics.jsonl"
    with open(metrics, "a") as fh:
        fh.write('{"event": "eval", "stage": "iter1", "infr')  # killed mid-line
    rd = RunDir(tmp_path / "r")
    n = len(rd.read_metrics())
    rd.metric("note", text="after the cut")
    assert [r["event"] for r in rd.read_metrics()][n:] == ["note"]
    rows = run(cfg, tmp_path / "r", resume=True, registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            assert tmp.suffix == ".png"
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["plot.png"]
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
