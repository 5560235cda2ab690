"""End to end: the plugin through the registry, and a tiny Table 1 run (slow)."""

import pytest

from genneg.plugins import build_registry


def test_registered_components():
    reg = build_registry(autoload=True)
    assert "traffic" in reg.names("oracles") and "traffic" in reg.names("datasets")
    assert {"traffic-agent", "traffic-scene"} <= set(reg.names("classifiers"))
    for name in (
        "traffic",
        "traffic-sumo",
        "traffic-paper",
        "traffic-agent-no-is",
        "traffic-paper-scene",
    ):
        cfg = reg.get("presets", name)()
        assert cfg.process.kind == "vp"
        assert cfg.classifier.element_loss == "per-element"  # the paper's rows
    # infraction on SUMO traffic is scored on the held-out city (Braunschweig)
    for name in ("traffic-sumo", "traffic-sumo-agent", "traffic-sumo-agent-stacked"):
        cfg = reg.get("presets", name)()
        assert cfg.eval.condition_split == "test"
        assert cfg.sampling.sampler == "ddpm-langevin"
        # classifiers read the baseline's D(x_t), straight through (docs/traffic.md)
        assert cfg.classifier.input == "denoised-st"
        # the score term (docs/traffic.md) on the SUMO presets, not on the paper's
        assert cfg.classifier.score_weight == 0.25
        assert cfg.classifier.score_on == "data"  # session 18: on noised training scenes
        # session 17 (docs/traffic.md "Where the guidance pays"): averaged classifier weights,
        # guidance below sigma 0.35 at scale 2, the residual student on trajectory states
        assert cfg.classifier.train.ema == 0.998
        assert cfg.classifier.guidance_window == [0.0, 0.35]
        assert cfg.classifier.guidance_scale == 2.0
        assert (cfg.distill.student, cfg.distill.trajectories) == ("residual", 2000)
        # session 18: the student confined to the window, regressed only inside it
        assert cfg.distill.in_window
    assert reg.get("presets", "traffic")().classifier.input == "c_in"  # the paper's
    assert reg.get("presets", "traffic")().eval.condition_split == "train"
    assert reg.get("presets", "traffic")().classifier.score_weight == 0.0
    joint = reg.get("presets", "traffic-sumo-agent-joint")()
    assert joint.classifier.network.name == "traffic-agent"
    assert joint.classifier.element_loss == "joint" and joint.classifier.weighting == "is"
    from genneg_traffic.network import TrafficDenoiser

    net = TrafficDenoiser(**reg.get("presets", "traffic-paper")().denoiser.options)
    assert 6.0e6 < sum(p.numel() for p in net.parameters()) < 7.0e6  # App. B.2: ~6.3M


@pytest.mark.slow
def test_tiny_table(tmp_path):
    from genneg_traffic.table import run_table

    root = tmp_path / "data"
    sets = [
        f"data_root={str(root)!r}".replace("'", '"'),
        f'oracle.options.dataset_dir="{root}/traffic/tiny"',
        'dataset.options.name="tiny"',
        "dataset.options.source_options={cities = 3, snapshots = 4, extent = 160.0}",
        "dataset.options.window={max_agents = 4, raster = 32}",
        "denoiser.options={hidden = 16, heads = 2, layers = 1, ff_mult = 1, map_width = 4}",
        "classifier.network.options="
        "{hidden = 16, heads = 2, layers = 1, ff_mult = 1, map_width = 4}",
        "baseline.steps=40",
        "classifier.train.steps=5",
        "distill.train.steps=5",
        "sampling.steps=10",
        "synth.n_per_class=8",
        "synth.max_samples=200",
        "synth.min_per_class=1",
        "eval.n_samples=40",
        "eval.elbo_points=20",
        "eval.elbo_k=2",
        "classifier.score_weight=0.25",  # the SUMO presets' score term, through the rows
        'classifier.input="denoised-st"',  # and their classifier input
    ]
    lines = []
    text = run_table(
        "traffic",
        str(tmp_path / "runs"),
        assignments=sets,
        rows=["agent-joint", "agent"],
        progress=False,
        log=lines.append,
        jobs=2,  # the rows in two worker processes
    )
    assert "baseline DM" in text
    started = [line for line in lines if "(worker process)" in line]
    assert len(started) == 2 and "agent ->" in started[0]  # the longer row first
    assert sum(": done (" in line for line in lines) == 2
    joint = tmp_path / "runs" / "agent-joint"
    assert 'element_loss = "joint"' in (joint / "config.toml").read_text()
    assert "score_weight = 0.25" in (joint / "config.toml").read_text()
    assert 'input = "denoised-st"' in (joint / "config.toml").read_text()
    assert '"event": "eval"' in (joint / "metrics.jsonl").read_text()
    assert (tmp_path / "runs" / "table.md").exists()
