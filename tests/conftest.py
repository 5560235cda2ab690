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


@pytest.fixture(autouse=True)
def _no_thread_governor_across_tests():
    """A CLI test starts genneg's thread governor (genneg/threads.py); it is stopped and the
    thread count restored after the test, so later tests run as configured."""
    from genneg import threads

    before, count = threads._governor, torch.get_num_threads()
    yield
    if threads._governor is not before:
        threads._governor = before
        torch.set_num_threads(count)
