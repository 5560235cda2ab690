"""Hook implementations of the traffic plugin."""

from __future__ import annotations

from genneg import hookimpl
from genneg_traffic.dataset import TrafficDataset
from genneg_traffic.network import TrafficDenoiser, by_agent_classifier, by_scene_classifier
from genneg_traffic.oracle import traffic_oracle
from genneg_traffic.presets import all_presets


@hookimpl
def register_datasets(register):
    register("traffic", TrafficDataset)


@hookimpl
def register_oracles(register):
    register("traffic", traffic_oracle)


@hookimpl
def register_denoisers(register):
    register("traffic", TrafficDenoiser)


@hookimpl
def register_classifiers(register):
    register("traffic-agent", by_agent_classifier)
    register("traffic-scene", by_scene_classifier)


@hookimpl
def register_presets(register):
    for name, factory in all_presets().items():
        register(name, factory)


@hookimpl
def register_commands(register):
    from genneg_traffic.cli import traffic

    register(traffic)
