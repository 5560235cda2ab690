import importlib.metadata
import types

import pytest
import torch

from genneg import hookimpl
from genneg.components import Oracle, OracleResult
from genneg.plugins import PluginError, UnknownComponentError, build_registry


class TinyOracle(Oracle):
    categories = ("bad",)

    def label(self, x, cond):
        valid = x[:, 0] > 0
        return OracleResult(valid=valid, categories={"bad": ~valid})


def plugin(**hooks):
    ns = types.SimpleNamespace()
    for name, fn in hooks.items():
        setattr(ns, name, hookimpl(fn))
    return ns


def test_builtin_components_are_registered_like_plugins():
    reg = build_registry(autoload=False)
    assert {"edm-heun", "ddpm", "ddim", "euler-maruyama"} <= set(reg.names("samplers"))
    assert reg.entries["samplers"]["ddpm"].plugin == "genneg"
    assert "score-matching" in reg.names("distillers")


def test_extra_plugin_registers_and_is_described():
    p = plugin(register_oracles=lambda register: register("tiny", TinyOracle))
    reg = build_registry({"tiny-plugin": p}, autoload=False)
    assert reg.get("oracles", "tiny") is TinyOracle
    assert reg.describe()["tiny-plugin"]["registers"] == {"oracles": ["tiny"]}


def test_duplicate_name_names_both_plugins():
    a = plugin(register_oracles=lambda register: register("same", TinyOracle))
    b = plugin(register_oracles=lambda register: register("same", TinyOracle))
    with pytest.raises(PluginError, match="registered twice: by plugin 'a' and by plugin 'b'"):
        build_registry({"a": a, "b": b}, autoload=False)


def test_registering_a_non_callable_is_an_error():
    p = plugin(register_oracles=lambda register: register("x", 42))
    with pytest.raises(PluginError, match="'x' is not callable"):
        build_registry({"p": p}, autoload=False)


def test_unknown_hook_is_rejected():
    bad = types.SimpleNamespace(register_oracels=hookimpl(lambda register: None))
    with pytest.raises(Exception, match="register_oracels"):
        build_registry({"typo": bad}, autoload=False)


def test_unknown_component_lists_known_names():
    reg = build_registry(autoload=False)
    with pytest.raises(UnknownComponentError, match="no sampler named 'heun'.*edm-heun"):
        reg.get("samplers", "heun")


class FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name, self.obj, self.error = name, obj, error
        self.dist = types.SimpleNamespace(name=f"genneg-{name}", version="9.9")

    def load(self):
        if self.error:
            raise self.error
        return self.obj


def test_broken_plugin_is_reported_and_others_keep_working(monkeypatch):
    good = plugin(register_oracles=lambda register: register("tiny", TinyOracle))
    half = plugin(
        register_oracles=lambda register: (
            register("half", TinyOracle),
            register("half", TinyOracle),
        )
    )
    eps = [
        FakeEntryPoint("broken", error=ImportError("no module named shapelyy")),
        FakeEntryPoint("half", half),
        FakeEntryPoint("good", good),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
    with pytest.warns(UserWarning, match="'broken' \\(genneg-broken 9.9\\) failed to load"):
        reg = build_registry(autoload=True)
    assert reg.get("oracles", "tiny") is TinyOracle
    assert "half" not in reg.names("oracles")  # a plugin that fails half-way leaves nothing
    failed = {f.plugin: f for f in reg.failures}
    assert set(failed) == {"broken", "half"} and "shapelyy" in failed["broken"].error
    assert "error" in reg.describe()["broken"]


def test_allow_list_and_autoload_switch(monkeypatch):
    good = plugin(register_oracles=lambda register: register("tiny", TinyOracle))
    other = plugin(register_oracles=lambda register: register("other", TinyOracle))
    eps = [FakeEntryPoint("good", good), FakeEntryPoint("other", other)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
    monkeypatch.setenv("GENNEG_PLUGINS", "good")
    assert build_registry(autoload=True).names("oracles") == ["tiny"]
    monkeypatch.delenv("GENNEG_PLUGINS")
    monkeypatch.setenv("GENNEG_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert build_registry().names("oracles") == []


def test_oracle_result_validation_names_the_problem():
    from genneg.components import validate_oracle_result

    ok = OracleResult(valid=torch.ones(3, dtype=torch.bool))
    validate_oracle_result(ok, 3, (), "o")
    with pytest.raises(ValueError, match="shape \\(2,\\), expected \\(3,\\)"):
        validate_oracle_result(OracleResult(valid=torch.ones(2, dtype=torch.bool)), 3, (), "o")
    with pytest.raises(ValueError, match="bool tensor"):
        validate_oracle_result(OracleResult(valid=torch.ones(3)), 3, (), "o")
    with pytest.raises(ValueError, match="unknown category 'x'"):
        validate_oracle_result(
            OracleResult(valid=ok.valid, categories={"x": ok.valid}), 3, ("y",), "o"
        )
    with pytest.raises(ValueError, match="not OracleResult"):
        validate_oracle_result(ok.valid, 3, (), "o")
