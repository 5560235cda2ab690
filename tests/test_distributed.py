"""torch.distributed with 2 gloo processes on CPU (torch.multiprocessing.spawn, env://
rendezvous on 127.0.0.1), on the toy domain with tiny sizes.

One spawn runs every check (process start-up is most of the cost): a full run, the sharded
synthetic-set drawing with known data, and sharded training against one process."""

import builtins
import json
import os
import socket
from pathlib import Path

import attrs
import pytest
import torch
import torch.multiprocessing as mp

from genneg import distributed
from genneg.components import DataSplit
from genneg.config import SynthConfig, TrainConfig
from genneg.engine import build
from genneg.engine.rundir import load_checkpoint
from genneg.engine.synth import draw_labelled
from genneg.engine.train import fit
from genneg.losses import DenoisingLoss
from genneg.plugins import build_registry
from tests import toy_plugin
from tests.toy_plugin import HalfPlane, toy_config

WORLD = 2


def tiny_config():
    cfg = toy_config()
    return attrs.evolve(
        cfg,
        baseline=attrs.evolve(cfg.baseline, steps=40),
        sampling=attrs.evolve(cfg.sampling, batch_size=200),
        iterations=1,
        synth=SynthConfig(n_per_class=150, max_samples=3000, min_per_class=10),
        classifier=attrs.evolve(cfg.classifier, train=attrs.evolve(cfg.classifier.train, steps=30)),
        distill=attrs.evolve(cfg.distill, train=attrs.evolve(cfg.distill.train, steps=10)),
        eval=attrs.evolve(cfg.eval, n_samples=301, elbo_points=101),
    )


class RankData:
    """A sampler that ignores the generator: rank r draws rows of a fixed tensor, whose
    column 1 is a unique id and column 0 decides the label (> 0: valid)."""

    batch_size = 50

    def __init__(self, rank):
        g = torch.Generator().manual_seed(100 + rank)
        n = 2000
        self.x = torch.stack(
            [torch.where(torch.rand(n, generator=g) < 0.2, -1.0, 1.0), rank * n + torch.arange(n)],
            dim=1,
        ).double()
        self.pos = 0

    def sample(self, denoiser, n, generator):
        out = self.x[self.pos : self.pos + n]
        self.pos += n
        return DataSplit(x=out)


def baseline_params(steps, generator_seed=5):
    """A toy baseline trained ``steps`` full-batch steps with the engine's sharded loss."""
    registry = build_registry({"toy": toy_plugin}, autoload=False)
    cfg = toy_config()
    process = build.make_process(cfg.process)
    torch.manual_seed(0)
    net = build.make_denoiser(registry, cfg.denoiser, process)
    train = DataSplit(x=0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(1)))
    gen = torch.Generator().manual_seed(generator_seed)
    loss = DenoisingLoss(process)
    fit(
        net.parameters(),
        lambda step: loss(net, train.x, train.cond, gen),
        TrainConfig(steps=steps, batch_size=64, lr=1e-2, log_every=steps),
        desc="t",
        progress=False,
        sharded=True,
    )
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _worker(rank, port, tmp):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        GENNEG_DISABLE_PLUGIN_AUTOLOAD="1",
    )
    torch.set_num_threads(1)
    tmp = Path(tmp)
    out = tmp / "run"
    written = []
    if rank != 0:  # record every file this rank opens for writing inside the run directory
        real_open = builtins.open

        def spy(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and str(out) in str(file):
                written.append(str(file))
            return real_open(file, mode, *args, **kwargs)

        builtins.open = spy
    from genneg.engine.runner import run

    registry = build_registry({"toy": toy_plugin}, autoload=False)
    rows = run(tiny_config(), out, registry=registry, progress=False, quiet=True)
    assert distributed.is_distributed() and distributed.world_size() == WORLD

    synth = draw_labelled(
        RankData(rank),
        None,
        HalfPlane(0.0),
        "half",
        SynthConfig(n_per_class=120, max_samples=4000, min_per_class=5),
        keep_natural=True,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    params = baseline_params(12)
    if rank != 0:
        builtins.open = real_open
    torch.save(
        {
            "rows": json.dumps(rows),
            "written": written,
            "summary": synth.summary(),
            "pos": synth.positives.data.x,
            "neg": synth.negatives.data.x,
            "nat": synth.natural.data.x,
            "params": params,
        },
        tmp / f"rank{rank}.pt",
    )
    distributed.destroy()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return tmp, ranks


def test_run_completes_and_only_rank_0_writes(spawned):
    tmp, ranks = spawned
    rows = [json.loads(r["rows"]) for r in ranks]
    assert [r["stage"] for r in rows[0]] == ["baseline", "iter1", "distill"]
    assert rows[0] == rows[1]  # every rank returns the same, gathered metrics
    for row in rows[0]:
        assert row["n"] == 301 and row["elbo_points"] == 101
        assert 0 <= row["infraction"] <= 100 and torch.isfinite(torch.tensor(row["elbo"]))
    assert ranks[1]["written"] == []
    run_dir = tmp / "run"
    assert json.loads((run_dir / "state.json").read_text())["done"] == [
        "baseline",
        "iter1",
        "distill",
    ]
    assert not list(run_dir.rglob(".*tmp*"))  # no temporary file left behind
    log = (run_dir / "log.txt").read_text()
    assert log.count("baseline: trained") == 1  # one writer
    evals = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"eval"' in line
    ]
    assert [e["stage"] for e in evals] == ["baseline", "iter1", "distill"]
    synth = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if '"synth"' in line
    ][0]
    assert synth["n_drawn"] % (WORLD * 200) == 0  # whole rounds of 2 x 200 samples
    assert synth["alpha"] == synth["n_positive"] / (synth["n_positive"] + synth["n_negative"])
    assert synth["kept_positive"] == synth["kept_negative"] == 150
    ckpt = load_checkpoint(run_dir / "ckpt" / "distill.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["modules"]["denoiser"].values())


def test_synthetic_set_uses_all_reduced_counts_without_duplicates(spawned):
    _, ranks = spawned
    a, b = ranks
    assert a["summary"] == b["summary"]
    for key in ("pos", "neg", "nat"):
        assert torch.equal(a[key], b[key])  # every rank trains on the same set
    s = a["summary"]
    assert s["kept_positive"] == s["kept_negative"] == 120 and len(a["nat"]) == 240
    ids = torch.cat([a["pos"][:, 1], a["neg"][:, 1]])
    assert len(ids.unique()) == len(ids)  # no sample twice
    assert (a["pos"][:, 0] > 0).all() and (a["neg"][:, 0] <= 0).all()
    # the counts are those of both ranks' draws: rounds of 2 x 50 until 120 negatives exist
    data = [RankData(r).x for r in range(WORLD)]
    rounds = s["n_drawn"] // (WORLD * 50)
    drawn = torch.cat([d[: rounds * 50] for d in data])
    assert s["n_drawn"] == len(drawn)
    assert s["n_positive"] == int((drawn[:, 0] > 0).sum())
    assert s["alpha"] == pytest.approx(s["n_positive"] / s["n_drawn"])
    before = torch.cat([d[: (rounds - 1) * 50] for d in data])
    assert int((before[:, 0] <= 0).sum()) < 120 <= int((drawn[:, 0] <= 0).sum())
    # the kept negatives are the first 120 in (round, rank) order
    order = torch.cat([d[i * 50 : (i + 1) * 50] for i in range(rounds) for d in data])
    assert torch.equal(a["neg"], order[order[:, 0] <= 0][:120])


def test_sharded_training_matches_one_process(spawned):
    _, ranks = spawned
    assert torch.equal(ranks[0]["params"], ranks[1]["params"])  # the ranks stay in step
    one = baseline_params(12)
    assert torch.allclose(ranks[0]["params"], one, atol=1e-5, rtol=1e-4)
