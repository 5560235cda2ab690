"""genneg-motion: the motion experiment of Gen-neG (Sec. 4.3, App. B.3).

HumanML3D's 263-d features (:mod:`genneg_motion.features`), an MDM-compatible transformer
(:mod:`genneg_motion.mdm`), a ground-penetration oracle on recovered joints
(:mod:`genneg_motion.oracle`, on SMPL meshes in :mod:`genneg_motion.smpl_oracle`), a HumanML3D
loader and a download-free synthetic motion source.
"""

__version__ = "0.1.0"
