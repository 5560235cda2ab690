"""Registration through the entry point, presets and the command line."""

import attrs
import pytest
import torch
from click.testing import CliRunner
from genneg_motion import plugin

from genneg import Experiment
from genneg import config as config_mod
from genneg.plugins import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry(extra_plugins={"motion": plugin}, autoload=False)


def test_components_are_registered(registry):
    assert {"mdm"} <= set(registry.names("denoisers"))
    assert {"mdm-classifier"} <= set(registry.names("classifiers"))
    assert {"ground-penetration", "ground-penetration-smpl"} <= set(registry.names("oracles"))
    assert {"motion-synthetic", "humanml3d"} <= set(registry.names("datasets"))
    assert {"motion", "motion-no-is", "motion-paper", "motion-paper-no-is"} <= set(
        registry.names("presets")
    )


@pytest.mark.parametrize("name", ["motion", "motion-paper", "motion-no-is"])
def test_presets_round_trip_through_toml_and_build(registry, name):
    cfg = registry.get("presets", name)()
    again = config_mod.from_dict(config_mod.to_dict(cfg))
    assert again == cfg
    assert cfg.process.options == {"timesteps": 1000, "schedule": "cosine", "prediction": "x0"}
    assert cfg.eval.elbo == "r-elbo"
    exp = Experiment(cfg, registry=registry, device="cpu")  # parts built on use: no data
    process = exp.process
    if name != "motion-paper":  # the paper sizes are built in test_mdm
        den, clf = exp.new_denoiser(), exp.new_classifier()
        x = torch.randn(2, 20, 263)
        sigma = process.t_to_sigma(torch.tensor([10, 900]))
        assert den(x, sigma).shape == x.shape
        assert clf(x, sigma, mask=torch.ones(2, 20, dtype=torch.bool)).shape == (2,)
    else:
        assert cfg.denoiser.options["latent_dim"] == 512
        assert cfg.denoiser.options["num_layers"] == 8


def test_table2_configs_share_the_baseline(registry, tmp_path):
    from genneg_motion.table2 import table2_configs

    base = attrs.evolve(registry.get("presets", "motion")(), iterations=3)
    cfgs = table2_configs(base, tmp_path)
    assert [c.classifier.weighting for c in cfgs.values()] == ["is", "no-is"]
    assert all(c.iterations == 1 for c in cfgs.values())
    assert cfgs["classifier"].baseline_from == ""
    assert cfgs["classifier-no-is"].baseline_from == str(tmp_path / "classifier")
    cfgs = table2_configs(base, tmp_path, per_frame=True)
    pf = cfgs["classifier-per-frame"]
    assert pf.classifier.network.options["granularity"] == "element"
    assert pf.classifier.weighting == "is"
    assert pf.baseline_from == str(tmp_path / "classifier")


def test_cli_group_is_added():
    from genneg.cli import cli
    from genneg.plugins import build_registry, set_registry

    set_registry(build_registry({"motion-test": plugin}, autoload=False))
    try:
        result = CliRunner().invoke(cli, ["motion", "--help"])
    finally:
        set_registry(None)
    assert result.exit_code == 0
    assert "table2" in result.output and "import-mdm" in result.output


def test_stage_timings_skip_a_cut_metrics_line(tmp_path):
    """``genneg motion table2`` resumed after a kill reads the run's metrics through RunDir."""
    import json

    from genneg_motion.table2 import _stage_seconds

    lines = [
        json.dumps({"event": "train", "stage": "baseline", "seconds": 12.34}),
        json.dumps({"event": "eval", "stage": "baseline", "n": 10, "seconds_per_sample": 0.5}),
        '{"event": "synth", "stage": "iter1", "seco',
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert _stage_seconds(tmp_path) == {"baseline": {"train": 12.3, "eval sampling": 5.0}}
