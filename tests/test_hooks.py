"""Every hook of :mod:`genneg.hookspecs` is documented (README or docs/) and exercised through
the host by a test plugin that implements all of them (as datasette checks its hooks)."""

import inspect
import re
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from genneg import hookimpl, hookspecs
from genneg.cli import cli
from genneg.plugins import KINDS, PluginError, build_registry, set_registry
from tests import toy_plugin

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "genneg_spec")
)


def test_every_kind_has_a_hook_and_every_hook_a_kind():
    assert HOOKS == sorted(f"register_{kind}" for kind in KINDS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    assert re.search(rf"`{hook}\b", docs), f"{hook} is not documented in README.md or docs/"
    spec = getattr(hookspecs, hook)
    assert ":param register:" in (spec.__doc__ or ""), f"{hook} has no :param register: doc"


@click.command("hello")
def hello():
    """Say hello (a command registered by the all-hooks test plugin)."""
    click.echo("hello from a plugin")


def _sampler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, progress=False):
    return x


def _distiller(student, teacher, data, *, process, train, generator, progress=True, log=None):
    return []


def all_hooks_plugin():
    """A plugin implementing every hook."""
    registrations = {
        "oracles": ("all-oracle", toy_plugin.HalfPlane),
        "denoisers": ("all-denoiser", toy_plugin.MLP),
        "classifiers": ("all-classifier", toy_plugin.MLPClassifier),
        "samplers": ("all-sampler", _sampler),
        "distillers": ("all-distiller", _distiller),
        "datasets": ("all-dataset", toy_plugin.ToyData),
        "presets": ("all-preset", toy_plugin.toy_config),
        "benchmarks": ("all-bench", lambda report: report.add("all", ok=1)),
    }
    ns = types.SimpleNamespace()
    for kind, (name, obj) in registrations.items():
        setattr(
            ns,
            f"register_{kind}",
            hookimpl(lambda register, name=name, obj=obj: register(name, obj)),
        )
    ns.register_commands = hookimpl(lambda register: register(hello))
    return ns, registrations


def test_every_hook_is_exercised_through_the_host():
    plugin, registrations = all_hooks_plugin()
    reg = build_registry({"all-hooks": plugin}, autoload=False)
    described = reg.describe()["all-hooks"]["registers"]
    for kind, (name, obj) in registrations.items():
        assert reg.get(kind, name) is obj
        assert described[kind] == [name]
    assert described["commands"] == ["hello"]
    set_registry(reg)
    try:
        out = CliRunner().invoke(cli, ["hello"])
        listing = CliRunner().invoke(cli, ["--help"])
    finally:
        set_registry(None)
    assert out.exit_code == 0 and out.output == "hello from a plugin\n"
    assert "hello" in listing.output and "sample" in listing.output  # genneg's own, too


def test_a_command_name_taken_twice_names_both_plugins():
    a = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(hello)))
    b = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(hello)))
    with pytest.raises(PluginError, match="command 'hello' is registered twice: by plugin 'a'"):
        build_registry({"a": a, "b": b}, autoload=False)
    c = types.SimpleNamespace(register_commands=hookimpl(lambda register: register("hello")))
    with pytest.raises(PluginError, match="not a click command"):
        build_registry({"c": c}, autoload=False)


def test_a_plugin_command_named_like_a_core_one_is_ignored_with_a_warning():
    clash = click.Command("run", callback=lambda: click.echo("hijacked"))
    p = types.SimpleNamespace(register_commands=hookimpl(lambda register: register(clash)))
    set_registry(build_registry({"clash": p}, autoload=False))
    try:
        out = CliRunner().invoke(cli, ["run", "--help"])
    finally:
        set_registry(None)
    assert "hijacked" not in out.output and "Run the Gen-neG experiment" in out.output
