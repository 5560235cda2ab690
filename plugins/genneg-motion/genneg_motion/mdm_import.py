"""Turning an official MDM checkpoint into a genneg baseline checkpoint."""

from __future__ import annotations

from pathlib import Path

from genneg import Experiment, RunDir, get_registry
from genneg_motion.mdm import load_mdm_checkpoint


def import_mdm(checkpoint: str, out: str, preset: str = "motion-paper", registry=None) -> Path:
    """Load ``checkpoint`` into the preset's MDM and save it as ``out/ckpt/baseline.pt`` (the
    run-directory layout ``baseline_from`` reads)."""
    registry = registry or get_registry()
    exp = Experiment(registry.get("presets", preset)(), registry=registry, device="cpu")
    denoiser = exp.new_denoiser()
    load_mdm_checkpoint(denoiser.network, checkpoint)
    rd = RunDir(out, quiet=True)
    rd.save("baseline", {"denoiser": denoiser}, exp.config_toml, {"imported_from": str(checkpoint)})
    return rd.ckpt_path("baseline")
