"""Core tests do not autoload installed plugins (pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD
pattern); tests that need them build a registry explicitly. The switch is set per test, so
the plugins' own tests in the same session still find their entry points."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _core_registry(monkeypatch):
    from genneg.plugins import set_registry

    monkeypatch.setenv("GENNEG_DISABLE_PLUGIN_AUTOLOAD", "1")
    set_registry(None)
    torch.manual_seed(0)
    yield
    set_registry(None)
