"""Core tests do not autoload installed plugins (pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD
pattern); tests that need them build a registry explicitly."""

import os

import pytest
import torch

os.environ.setdefault("GENNEG_DISABLE_PLUGIN_AUTOLOAD", "1")


@pytest.fixture(autouse=True)
def _fresh_registry():
    from genneg.plugins import set_registry

    set_registry(None)
    torch.manual_seed(0)
    yield
    set_registry(None)
