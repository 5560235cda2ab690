"""Ground penetration of the SMPL body mesh, where the user has SMPL's model files.

Each frame is posed from the features: the root yaw and position from the integrated root
velocities, the 21 body joints' local rotations from the 6-D rotation features (SMPL's hand
joints 22-23 at rest), the neutral shape (betas 0). The posed mesh is moved so that its pelvis
joint sits at the recovered root, and a frame infracts when its lowest vertex is more than
``threshold`` below the floor. HumanML3D's floor is the lowest *joint* of each motion, and a
body's soles lie a few centimetres below its ankle and toe joints, hence a default threshold of
10 cm (5 cm for joints). Needs ``pip install genneg-motion[smplx]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genneg import Oracle, OracleResult
from genneg_motion import skeleton as sk
from genneg_motion.features import recover_root
from genneg_motion.oracle import CATEGORY
from genneg_motion.rotations import matrix_to_axis_angle, rotation_6d_to_matrix
from genneg_motion.splits import denormalise

#: smplx selects extra keypoints (nose, toes, finger tips...) by vertex index; this oracle does
#: not use them, so every one points at vertex 0 (which also lets small test models load).
_KEYPOINTS = (
    "nose",
    "reye",
    "leye",
    "rear",
    "lear",
    "LBigToe",
    "LSmallToe",
    "LHeel",
    "RBigToe",
    "RSmallToe",
    "RHeel",
) + tuple(f"{h}{tip}" for h in "lr" for tip in ("thumb", "index", "middle", "ring", "pinky"))


def load_smpl(model_path: str, gender: str = "neutral"):
    """An ``smplx.SMPL`` body model from a file or a folder of ``SMPL_<GENDER>.pkl``."""
    try:
        import smplx
    except ImportError:
        raise ImportError(
            "the mesh oracle needs smplx: pip install 'genneg-motion[smplx]'"
        ) from None
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no SMPL model at {path} (download SMPL from smpl.is.tue.mpg.de)")
    return smplx.SMPL(
        model_path=str(path), gender=gender, vertex_ids={k: 0 for k in _KEYPOINTS}
    ).eval()


def pose_parameters(features: torch.Tensor):
    """SMPL parameters per frame from features ``[N, 263]`` of consecutive frames of one or
    more motions laid out as ``[..., T, 263]``: ``global_orient [.., 3]``, ``body_pose
    [.., 69]``, and the root position ``[.., 3]``."""
    phi, root = recover_root(features)
    yaw = torch.zeros(phi.shape + (3,), dtype=features.dtype, device=features.device)
    yaw[..., 1] = -phi  # world = R_y(-phi) facing frame
    rot6 = features[..., sk.ROT].reshape(features.shape[:-1] + (sk.N_JOINTS - 1, 6))
    aa = matrix_to_axis_angle(rotation_6d_to_matrix(rot6))  # [..., 21, 3]
    hands = torch.zeros(aa.shape[:-2] + (2, 3), dtype=aa.dtype, device=aa.device)
    body_pose = torch.cat([aa, hands], dim=-2).flatten(-2)
    return yaw, body_pose, root


class SMPLGroundPenetrationOracle(Oracle):
    """Labels motions by the lowest vertex of the posed SMPL mesh per frame.

    :param model_path: an SMPL ``.pkl`` file, or a folder with ``SMPL_NEUTRAL.pkl`` etc.
    :param threshold: metres below the floor a vertex may go before the frame infracts.
    :param chunk: frames posed at once (memory: ~80 kB per frame).
    """

    categories = (CATEGORY,)

    def __init__(
        self, model_path: str, gender: str = "neutral", threshold: float = 0.10, chunk: int = 2048
    ):
        self.body = load_smpl(model_path, gender)
        self.threshold = float(threshold)
        self.chunk = chunk

    @torch.no_grad()
    def lowest_vertex(self, features: torch.Tensor) -> torch.Tensor:
        """Height of the lowest mesh vertex per frame, ``[B, T]``, for features ``[B, T, 263]``."""
        B, T, _ = features.shape
        orient, body_pose, root = (
            p.reshape(B * T, -1).float() for p in pose_parameters(features.double())
        )
        lows = []
        for s in range(0, B * T, self.chunk):
            sl = slice(s, s + self.chunk)
            out = self.body(
                global_orient=orient[sl],
                body_pose=body_pose[sl],
                betas=torch.zeros(orient[sl].shape[0], self.body.num_betas),
                return_verts=True,
            )
            shift = root[sl] - out.joints[:, 0]  # pelvis onto the recovered root
            lows.append((out.vertices[..., 1] + shift[:, 1:2]).amin(dim=1))
        return torch.cat(lows).reshape(B, T)

    def label(self, x: torch.Tensor, cond: dict[str, torch.Tensor]) -> OracleResult:
        bad = self.lowest_vertex(denormalise(x, cond)) < -self.threshold
        mask = cond.get("mask")
        if mask is not None:
            bad = bad & mask
        infracts = bad.any(dim=1)
        return OracleResult(valid=~infracts, categories={CATEGORY: infracts}, element_valid=~bad)
