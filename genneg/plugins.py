"""Plugin manager and component registry.

Plugins are found through the ``genneg`` entry-point group; each entry point is loaded in its
own ``try``: a broken plugin is reported with its name and version and the others keep working.
Switches (as pytest and llm have them):

* ``GENNEG_DISABLE_PLUGIN_AUTOLOAD=1`` loads only the built-in components;
* ``GENNEG_PLUGINS=a,b`` loads only the named entry points.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Callable
from typing import Any

import attrs
import pluggy

from genneg import builtin, hookspecs
from genneg.hookspecs import hookimpl

__all__ = ["ENTRY_POINT_GROUP", "KINDS", "PluginError", "Registry", "UnknownComponentError"]
__all__ += ["build_registry", "get_registry", "hookimpl", "set_registry"]

ENTRY_POINT_GROUP = "genneg"
KINDS = (
    "oracles",
    "denoisers",
    "classifiers",
    "samplers",
    "distillers",
    "datasets",
    "presets",
    "benchmarks",
    "commands",
)


class PluginError(Exception):
    """A plugin registered something invalid or clashing."""


class UnknownComponentError(KeyError):
    """A component name that no installed plugin registered."""

    def __str__(self) -> str:
        return str(self.args[0])


@attrs.frozen
class Entry:
    """One registered component: its object and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


@attrs.frozen
class LoadFailure:
    """An entry point that could not be loaded."""

    plugin: str
    version: str
    error: str


class Registry:
    """All components by kind and name, built from one plugin manager."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.failures: list[LoadFailure] = []
        self.plugins: dict[str, str] = {}  # plugin name -> version

    def add_command(self, command: Any, plugin: str) -> None:
        """Register a ``click.Command`` under its own name (``register_commands``)."""
        name = getattr(command, "name", None)
        if not callable(getattr(command, "main", None)) or not name:
            raise PluginError(f"plugin {plugin!r} registered {command!r}, not a click command")
        self.add("commands", name, command, plugin)

    def add(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        """Register ``obj`` under ``name``; a name taken twice is an error naming both."""
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind[:-1]} with no name")
        if not callable(obj):
            raise PluginError(f"plugin {plugin!r}: {kind[:-1]} {name!r} is not callable")
        table = self.entries[kind]
        if name in table:
            other = table[name].plugin
            raise PluginError(
                f"{kind[:-1]} {name!r} is registered twice: by plugin {other!r} and by plugin "
                f"{plugin!r}"
            )
        table[name] = Entry(name, obj, plugin)

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name``; an unknown name lists the known ones."""
        table = self.entries[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise UnknownComponentError(
                f"no {kind[:-1]} named {name!r} is installed (known: {known}); "
                "`genneg plugins` lists what is installed"
            )
        return table[name].obj

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return sorted(self.entries[kind])

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: plugins, versions and what each registers."""
        out: dict[str, Any] = {}
        for plugin, version in self.plugins.items():
            out[plugin] = {"version": version, "registers": {}}
        for kind, table in self.entries.items():
            for entry in table.values():
                rec = out.setdefault(entry.plugin, {"version": "?", "registers": {}})
                rec["registers"].setdefault(kind, []).append(entry.name)
        for failure in self.failures:
            out[failure.plugin] = {"version": failure.version, "error": failure.error}
        return out


def _make_register(registry: Registry, kind: str, plugin: str) -> Callable[..., None]:
    if kind == "commands":
        return lambda command: registry.add_command(command, plugin)

    def register(name: str, obj: Any) -> None:
        registry.add(kind, name, obj, plugin)

    return register


def _call_hooks(pm: pluggy.PluginManager, registry: Registry, plugin: str) -> None:
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():
            if impl.plugin_name == plugin:
                impl.function(register=_make_register(registry, kind, plugin))


def _autoload_names() -> list[str] | None:
    allow = os.environ.get("GENNEG_PLUGINS")
    if allow is None:
        return None
    return [n.strip() for n in allow.split(",") if n.strip()]


def build_registry(extra_plugins: dict[str, Any] | None = None, autoload: bool | None = None):
    """Load the built-in plugin, entry-point plugins and ``extra_plugins`` into a new registry.

    :param extra_plugins: name -> module or object with hook implementations (for tests and
        notebooks).
    :param autoload: load entry points; default: unless ``GENNEG_DISABLE_PLUGIN_AUTOLOAD`` is set.
    """
    pm = pluggy.PluginManager("genneg")
    pm.add_hookspecs(hookspecs)
    registry = Registry()

    def load(name: str, version: str, obj: Any) -> None:
        # Register into a scratch copy first, so a plugin that fails half-way leaves nothing.
        scratch = Registry()
        scratch.entries = {k: dict(v) for k, v in registry.entries.items()}
        pm.register(obj, name=name)
        try:
            pm.check_pending()
            _call_hooks(pm, scratch, name)
        except Exception:
            pm.unregister(name=name)
            raise
        registry.entries = scratch.entries
        registry.plugins[name] = version

    load("genneg", _version("genneg"), builtin)
    if autoload is None:
        autoload = not os.environ.get("GENNEG_DISABLE_PLUGIN_AUTOLOAD")
    if autoload:
        allow = _autoload_names()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            dist = ep.dist.name if ep.dist is not None else ep.name
            version = ep.dist.version if ep.dist is not None else "?"
            try:
                load(ep.name, version, ep.load())
            except Exception as exc:  # a broken plugin must not take the others down
                registry.failures.append(
                    LoadFailure(ep.name, version, f"{type(exc).__name__}: {exc}")
                )
                warnings.warn(
                    f"genneg plugin {ep.name!r} ({dist} {version}) failed to load: {exc}",
                    stacklevel=2,
                )
    for name, obj in (extra_plugins or {}).items():
        load(name, "local", obj)
    return registry


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = build_registry()
    return _DEFAULT


def set_registry(registry: Registry | None) -> None:
    """Replace (or with ``None`` reset) the process-wide registry; for tests."""
    global _DEFAULT
    _DEFAULT = registry
