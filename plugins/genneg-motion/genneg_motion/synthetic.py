"""A download-free motion data source in HumanML3D's format: parametric motions
(:mod:`genneg_motion.gait`) written through the same joints -> features converter a real
dataset uses, with HumanML3D-style statistics and captions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from genneg import Dataset, DataSplit, OracleResult, Splits
from genneg_motion import gait
from genneg_motion.features import feature_stats, joints_to_features
from genneg_motion.oracle import DEFAULT_THRESHOLD
from genneg_motion.splits import denormalise, pack
from genneg_motion.text import encode


class MotionPlotMixin:
    """``plot_samples`` for motion datasets (the engine's per-stage picture)."""

    plot_threshold = DEFAULT_THRESHOLD

    def plot_samples(self, split: DataSplit, result: OracleResult, path: str, title: str) -> None:
        from genneg_motion.plotting import motion_joints, plot_motions

        bad = (~result.valid).nonzero().flatten()[:2].tolist()
        good = result.valid.nonzero().flatten()[:2].tolist()
        pick = bad + good
        if not pick:
            return
        part = split.index(torch.tensor(pick))
        joints = motion_joints(denormalise(part.x, part.cond), part.cond["mask"])
        titles = [("penetrates" if i in bad else "valid") + f" (#{i})" for i in pick]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        plot_motions(joints, titles, path, title, self.plot_threshold)


class SyntheticMotionDataset(MotionPlotMixin, Dataset):
    """Walks, runs, jumps and squats on the HumanML3D skeleton at 20 fps.

    :param n_train, n_val, n_test: motions per split.
    :param min_frames, max_frames: feature frames per motion (``max_frames`` is the padded
        length ``T``; HumanML3D uses 40..196).
    :param text_encoder: ``bow`` (default, no download), ``none`` or ``clip``.
    :param seed: the generator's seed (the data do not depend on the run seed).
    """

    def __init__(
        self,
        n_train: int = 1000,
        n_val: int = 200,
        n_test: int = 200,
        min_frames: int = 40,
        max_frames: int = 60,
        text_encoder: str = "bow",
        seed: int = 0,
        kinds: tuple = gait.KINDS,
        weights: tuple | None = None,
    ):
        if not 2 <= min_frames <= max_frames:
            raise ValueError(f"need 2 <= min_frames <= max_frames, got {min_frames}, {max_frames}")
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.min_frames, self.max_frames = min_frames, max_frames
        self.text_encoder = text_encoder
        self.seed = seed
        self.kinds = tuple(kinds)
        self.weights = None if weights is None else tuple(weights)

    def _key(self) -> str:
        spec = {
            "sizes": self.sizes,
            "frames": [self.min_frames, self.max_frames],
            "seed": self.seed,
            "kinds": self.kinds,
            "weights": self.weights,
            "v": 1,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def build_features(self) -> dict:
        """Generate every split's features and captions (deterministic in ``seed``)."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for name, n in self.sizes.items():
            motions = gait.generate_many(
                n,
                rng,
                min_frames=self.min_frames,
                max_frames=self.max_frames,
                kinds=self.kinds,
                weights=self.weights,
            )
            out[name] = {
                "features": [joints_to_features(m.positions, m.rotations) for m in motions],
                "captions": [m.caption for m in motions],
            }
        return out

    def _cached(self, root: str) -> dict:
        path = Path(root).expanduser() / "motion-synthetic" / f"{self._key()}.pt"
        if path.exists():
            return torch.load(path, weights_only=True)
        data = self.build_features()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(data, tmp)
        tmp.replace(path)
        return data

    def load(self, root: str, generator: torch.Generator) -> Splits:
        data = self._cached(root)
        train = data["train"]["features"]
        mask = torch.zeros(len(train), self.max_frames, dtype=torch.bool)
        stacked = torch.zeros(len(train), self.max_frames, train[0].shape[-1])
        for i, f in enumerate(train):
            stacked[i, : len(f)] = f
            mask[i, : len(f)] = True
        mean, std = feature_stats(stacked, mask)
        splits = {}
        for name in ("train", "val", "test"):
            d = data[name]
            text = encode(self.text_encoder, d["captions"])
            splits[name] = pack(d["features"], mean, std, self.max_frames, text)
        return Splits(**splits)
