"""Turning an official MDM checkpoint into a genneg baseline checkpoint."""

from __future__ import annotations

from pathlib import Path

from genneg import config as config_mod
from genneg.engine import build
from genneg.engine.rundir import RunDir
from genneg.plugins import get_registry
from genneg_motion.mdm import load_mdm_checkpoint


def import_mdm(checkpoint: str, out: str, preset: str = "motion-paper", registry=None) -> Path:
    """Load ``checkpoint`` into the preset's MDM and save it as ``out/ckpt/baseline.pt`` (the
    run-directory layout ``baseline_from`` reads)."""
    registry = registry or get_registry()
    cfg = registry.get("presets", preset)()
    process = build.make_process(cfg.process)
    denoiser = build.make_denoiser(registry, cfg.denoiser, process)
    load_mdm_checkpoint(denoiser.network, checkpoint)
    rd = RunDir(out, quiet=True)
    rd.save(
        "baseline",
        {"denoiser": denoiser},
        config_mod.dumps_toml(cfg),
        {"imported_from": str(checkpoint)},
    )
    return rd.ckpt_path("baseline")
