"""A run's data: the dataset's splits, loaded once per run and checked before any training."""

from __future__ import annotations

from pathlib import Path

import torch

from genneg import distributed
from genneg.components import Splits
from genneg.errors import DataError
from genneg.rng import stage_generator

#: The fewest rows a dataset split may have (an ELBO standard error needs two points).
MIN_POINTS = 2


def check_splits(splits: Splits) -> None:
    """Reject data that would silently poison training: NaN/inf, empty or tiny splits, splits
    that disagree on the sample shape."""
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        if len(split) == 0:
            raise DataError(f"dataset split {name!r} is empty")
        if len(split) < MIN_POINTS:
            raise DataError(
                f"dataset split {name!r} has only {len(split)} point(s); at least "
                f"{MIN_POINTS} are needed"
            )
        if not torch.isfinite(split.x).all():
            bad = int((~torch.isfinite(split.x.reshape(len(split), -1)).all(1)).sum())
            raise DataError(f"dataset split {name!r} has {bad} samples with NaN or inf values")
    shapes = {tuple(getattr(splits, n).x.shape[1:]) for n in ("train", "val", "test")}
    if len(shapes) != 1:
        raise DataError(f"dataset splits disagree on the sample shape: {sorted(shapes)}")


def load_splits(dataset, cfg, device) -> Splits:
    """The checked splits of ``dataset`` under ``cfg.data_root`` (split with the run's seed),
    on ``device``. Under torchrun rank 0 loads first, so a dataset that builds a cache under
    ``data_root`` builds it once."""
    root = str(Path(cfg.data_root).expanduser())
    gen = stage_generator(cfg.seed, "data", "split")
    splits = distributed.main_first(lambda: dataset.load(root, gen))
    check_splits(splits)
    return Splits(
        train=splits.train.to(device), val=splits.val.to(device), test=splits.test.to(device)
    )
