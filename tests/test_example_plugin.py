"""The example plugin under examples/ is pip-installed and found through its entry point."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genneg.plugins import build_registry

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "genneg-example-oracle"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in list(sys.modules):
        if name.startswith("genneg_example_oracle"):
            del sys.modules[name]


def test_example_plugin_is_discovered_through_its_entry_point(installed, monkeypatch):
    monkeypatch.delenv("GENNEG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("GENNEG_PLUGINS", "example-oracle")
    registry = build_registry()
    assert registry.entries["oracles"]["right-half"].plugin == "example-oracle"
    assert registry.plugins["example-oracle"] == "0.1.0"
    oracle = registry.get("oracles", "right-half")()
    result = oracle.label(torch.tensor([[0.5, 0.0], [-0.5, 0.0]]), {})
    assert result.valid.tolist() == [True, False]
    assert result.categories["left-half"].tolist() == [False, True]


def test_example_plugin_drives_a_run(installed, monkeypatch, tmp_path):
    """The custom oracle plugs into a whole Gen-neG run of the toy domain."""
    import attrs

    from genneg.engine.runner import run
    from tests import toy_plugin

    monkeypatch.delenv("GENNEG_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("GENNEG_PLUGINS", "example-oracle")
    registry = build_registry({"toy": toy_plugin})
    cfg = toy_plugin.toy_config(iterations=1)
    cfg = attrs.evolve(
        cfg,
        oracle=attrs.evolve(cfg.oracle, name="right-half"),
        distill=attrs.evolve(cfg.distill, enabled=False),
    )
    rows = run(cfg, tmp_path / "r", registry=registry, progress=False, quiet=True)
    assert [r["stage"] for r in rows] == ["baseline", "iter1"]
    assert "left-half" in rows[0]["categories"]
    # about half of N(0, 0.5^2) lies left of 0; one classifier must cut that down
    assert 35 < rows[0]["infraction"] < 65
    assert rows[1]["infraction"] < rows[0]["infraction"]
