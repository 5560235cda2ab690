import json
import types

from click.testing import CliRunner

from genneg import hookimpl
from genneg.cli import cli
from genneg.plugins import build_registry, set_registry
from tests import toy_plugin


def use_toy_registry():
    presets = types.SimpleNamespace(
        register_presets=hookimpl(lambda register: register("toy", toy_plugin.toy_config))
    )
    set_registry(build_registry({"toy": toy_plugin, "toy-presets": presets}, autoload=False))


def test_plugins_lists_components_as_json():
    use_toy_registry()
    out = CliRunner().invoke(cli, ["plugins", "--json"])
    assert out.exit_code == 0
    info = json.loads(out.output)
    assert info["toy"]["registers"]["oracles"] == ["half-plane"]
    assert "ddpm" in info["genneg"]["registers"]["samplers"]


def test_dry_run_prints_resolved_config():
    use_toy_registry()
    out = CliRunner().invoke(cli, ["run", "toy", "--dry-run", "--set", "iterations=7"])
    assert out.exit_code == 0, out.output
    assert "iterations = 7" in out.output


def test_bad_set_names_the_key():
    use_toy_registry()
    out = CliRunner().invoke(cli, ["run", "toy", "--set", "clasifier.weighting=1"])
    assert out.exit_code != 0
    assert "extra fields found (clasifier)" in out.output
    out = CliRunner().invoke(cli, ["run", "nope"])
    assert "no preset named 'nope'" in out.output


def test_run_then_eval(tmp_path):
    use_toy_registry()
    runner = CliRunner()
    out = runner.invoke(
        cli,
        [
            "run",
            "toy",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "iterations=1",
            "--set",
            "distill.enabled=false",
            "--no-progress",
        ],
    )
    assert out.exit_code == 0, out.output
    out = runner.invoke(cli, ["eval", str(tmp_path / "r")])
    assert out.exit_code == 0
    assert "| baseline |" in out.output and "| iter1 |" in out.output
    again = runner.invoke(
        cli,
        [
            "run",
            "toy",
            "--out",
            str(tmp_path / "r"),
            "--set",
            "iterations=1",
            "--set",
            "distill.enabled=false",
        ],
    )
    assert again.exit_code != 0 and "--resume" in again.output
