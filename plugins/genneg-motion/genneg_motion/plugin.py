"""Hook implementations of the motion plugin."""

from __future__ import annotations

from genneg import hookimpl
from genneg_motion.humanml3d import HumanML3DDataset
from genneg_motion.mdm import MDM, MDMClassifier
from genneg_motion.oracle import GroundPenetrationOracle
from genneg_motion.presets import ablation, demo_preset, paper_preset
from genneg_motion.synthetic import SyntheticMotionDataset


def _smpl_oracle(**options):
    from genneg_motion.smpl_oracle import SMPLGroundPenetrationOracle

    return SMPLGroundPenetrationOracle(**options)


_smpl_oracle.__doc__ = "Ground penetration of the posed SMPL mesh (needs smplx and SMPL files)."


@hookimpl
def register_datasets(register):
    register("motion-synthetic", SyntheticMotionDataset)
    register("humanml3d", HumanML3DDataset)


@hookimpl
def register_oracles(register):
    register("ground-penetration", GroundPenetrationOracle)
    register("ground-penetration-smpl", _smpl_oracle)


@hookimpl
def register_denoisers(register):
    register("mdm", MDM)


@hookimpl
def register_classifiers(register):
    register("mdm-classifier", MDMClassifier)


@hookimpl
def register_presets(register):
    register("motion", demo_preset)
    register("motion-no-is", ablation(demo_preset, "no-is", "no-is"))
    register("motion-paper", paper_preset)
    register("motion-paper-no-is", ablation(paper_preset, "no-is", "no-is"))


@hookimpl
def register_commands(register):
    from genneg_motion.commands import motion

    register(motion)
