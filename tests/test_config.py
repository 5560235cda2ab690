import pytest

from genneg import config as c


def base():
    return c.RunConfig(
        dataset=c.ComponentSpec(name="d"),
        oracle=c.ComponentSpec(name="o"),
        denoiser=c.ComponentSpec(name="n"),
        classifier=c.ClassifierConfig(network=c.ComponentSpec(name="n")),
    )


def test_toml_round_trip(tmp_path):
    cfg = c.resolve(base(), assignments=["denoiser.options.hidden=64", "baseline.lr=1e-3"])
    path = tmp_path / "c.toml"
    path.write_text(c.dumps_toml(cfg))
    assert c.from_dict(c.load_toml(path)) == cfg
    assert cfg.denoiser.options == {"hidden": 64} and cfg.baseline.lr == 1e-3


def test_unknown_key_is_named():
    with pytest.raises(c.ConfigError, match="extra fields found \\(classifer\\)"):
        c.resolve(base(), assignments=["classifer.train.steps=3"])
    with pytest.raises(c.ConfigError, match="extra fields found \\(stepz\\) @ config.baseline"):
        c.resolve(base(), assignments=["baseline.stepz=3"])


def test_bad_values_are_named():
    with pytest.raises(c.ConfigError, match="steps must be >= 0, got -1 @ config.baseline"):
        c.resolve(base(), assignments=["baseline.steps=-1"])
    with pytest.raises(c.ConfigError, match="'weighting' must be in"):
        c.resolve(base(), assignments=['classifier.weighting="magic"'])
    with pytest.raises(c.ConfigError, match="'element_loss' must be in"):
        c.resolve(base(), assignments=['classifier.element_loss="max"'])
    with pytest.raises(c.ConfigError, match="config.baseline.steps"):
        c.resolve(base(), assignments=["baseline.steps=lots"])
    with pytest.raises(c.ConfigError, match="key=value"):
        c.resolve(base(), assignments=["baseline.steps"])


def test_toml_file_then_set_override(tmp_path):
    f = tmp_path / "o.toml"
    f.write_text("iterations = 4\n[classifier]\nweighting = 'no-is'\n")
    cfg = c.resolve(base(), files=[f], assignments=["iterations=2"])
    assert cfg.iterations == 2 and cfg.classifier.weighting == "no-is"
