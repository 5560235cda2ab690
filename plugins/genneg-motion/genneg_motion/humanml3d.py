"""The HumanML3D dataset as users have it on disk (Guo et al. 2022)::

    HumanML3D/
      new_joint_vecs/<id>.npy   [F, 263] features at 20 fps
      texts/<id>.txt            lines "caption#tokens#from#to" (seconds; 0#0 = whole motion)
      Mean.npy, Std.npy         [263] normalisation
      train.txt, val.txt, test.txt   one motion id per line

As MDM's loader does, a caption with a ``from``/``to`` span becomes its own sub-motion; motions
shorter than ``min_frames`` or of 200 frames and more are dropped; motions are cut to
``max_frames`` (196) frames, here from their start (MDM crops at random while training). Each
kept (motion, caption) pair is one row; ``captions_per_motion`` limits rows per motion.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from genneg import Dataset, DataSplit, Splits
from genneg_motion import skeleton as sk
from genneg_motion.splits import pack
from genneg_motion.synthetic import MotionPlotMixin
from genneg_motion.text import encode


class HumanML3DError(ValueError):
    """A HumanML3D folder that is missing something or malformed."""


def read_split_ids(folder: Path, split: str) -> list[str]:
    path = folder / f"{split}.txt"
    if not path.exists():
        raise HumanML3DError(f"{folder} has no split file {path.name}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_captions(path: Path) -> list[tuple[str, float, float]]:
    """``(caption, from, to)`` per line of a HumanML3D text file (NaN spans count as 0)."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.strip().split("#")
        if len(parts) < 4 or not parts[0]:
            continue
        f, t = (float(p) if p not in ("", "nan") else 0.0 for p in parts[2:4])
        out.append((parts[0], 0.0 if np.isnan(f) else f, 0.0 if np.isnan(t) else t))
    return out


def load_entries(
    folder: Path,
    split: str,
    *,
    min_frames: int,
    max_frames: int,
    captions_per_motion: int,
    limit: int = 0,
):
    """Feature arrays and captions of one split (see the module docstring)."""
    feats, caps = [], []
    for mid in read_split_ids(folder, split):
        vec_path = folder / "new_joint_vecs" / f"{mid}.npy"
        txt_path = folder / "texts" / f"{mid}.txt"
        if not vec_path.exists() or not txt_path.exists():
            continue
        motion = np.load(vec_path).astype(np.float32)
        if motion.ndim != 2 or motion.shape[1] != sk.FEATURE_DIM:
            raise HumanML3DError(f"{vec_path} has shape {motion.shape}, expected [F, 263]")
        kept = 0
        for caption, f, t in read_captions(txt_path):
            if kept >= captions_per_motion:
                break
            clip = motion if f == 0 and t == 0 else motion[int(f * sk.FPS) : int(t * sk.FPS)]
            if len(clip) < min_frames or len(clip) >= 200:
                continue
            feats.append(torch.from_numpy(clip[:max_frames]))
            caps.append(caption)
            kept += 1
        if limit and len(feats) >= limit:
            break
    return feats, caps


class HumanML3DDataset(MotionPlotMixin, Dataset):
    """Loads a HumanML3D folder (see the module docstring) into padded, normalised splits.

    :param path: the ``HumanML3D`` folder (``~`` expanded).
    :param text_encoder: ``clip`` (as MDM), ``bow`` or ``none``.
    :param limit: at most this many rows per split (0: all), for quick tries.
    """

    def __init__(
        self,
        path: str = "dataset/HumanML3D",
        text_encoder: str = "clip",
        min_frames: int = 40,
        max_frames: int = sk.MAX_FRAMES,
        captions_per_motion: int = 1,
        limit: int = 0,
        cache: bool = True,
    ):
        self.path = Path(path).expanduser()
        self.text_encoder = text_encoder
        self.min_frames, self.max_frames = min_frames, max_frames
        self.captions_per_motion = captions_per_motion
        self.limit = limit
        self.cache = cache

    def _key(self) -> str:
        spec = {
            "path": str(self.path.resolve()),
            "text": self.text_encoder,
            "frames": [self.min_frames, self.max_frames],
            "caps": self.captions_per_motion,
            "limit": self.limit,
            "v": 1,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def build(self) -> Splits:
        folder = self.path
        for name in ("Mean.npy", "Std.npy"):
            if not (folder / name).exists():
                raise HumanML3DError(f"{folder} has no {name} (is it a HumanML3D folder?)")
        mean = torch.from_numpy(np.load(folder / "Mean.npy").astype(np.float32))
        std = torch.from_numpy(np.load(folder / "Std.npy").astype(np.float32))
        splits = {}
        for name in ("train", "val", "test"):
            feats, caps = load_entries(
                folder,
                name,
                min_frames=self.min_frames,
                max_frames=self.max_frames,
                captions_per_motion=self.captions_per_motion,
                limit=self.limit,
            )
            if not feats:
                raise HumanML3DError(
                    f"split {name!r} of {folder} has no usable motion "
                    f"({self.min_frames} to 199 frames, with a caption)"
                )
            splits[name] = pack(feats, mean, std, self.max_frames, encode(self.text_encoder, caps))
        return Splits(**splits)

    def load(self, root: str, generator: torch.Generator) -> Splits:
        if not self.cache:
            return self.build()
        path = Path(root).expanduser() / "motion-humanml3d" / f"{self._key()}.pt"
        if path.exists():
            d = torch.load(path, weights_only=True)
            return Splits(**{k: DataSplit(x=v["x"], cond=v["cond"]) for k, v in d.items()})
        splits = self.build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                k: {"x": getattr(splits, k).x, "cond": getattr(splits, k).cond}
                for k in ("train", "val", "test")
            },
            tmp,
        )
        tmp.replace(path)
        return splits
