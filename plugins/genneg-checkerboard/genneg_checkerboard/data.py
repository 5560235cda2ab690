"""The checkerboard dataset and oracle."""

from __future__ import annotations

import torch

from genneg import Dataset, DataSplit, Oracle, OracleResult, Splits
from genneg_checkerboard.geometry import Board


class CheckerboardDataset(Dataset):
    """Points uniform on the filled cells: ``n_train`` for training (1000 in the paper),
    ``n_val`` and ``n_test`` held out. Made from the run's seed; nothing is downloaded."""

    def __init__(
        self,
        n_train: int = 1000,
        n_val: int = 1000,
        n_test: int = 1000,
        n_cells: int = 4,
        half: float = 1.0,
    ):
        for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.sizes = (n_train, n_val, n_test)
        self.board = Board(n_cells, half)

    def load(self, root: str, generator: torch.Generator) -> Splits:
        n_train, n_val, n_test = self.sizes
        return Splits(
            train=DataSplit(x=self.board.sample(n_train, generator)),
            val=DataSplit(x=self.board.sample(n_val, generator)),
            test=DataSplit(x=self.board.sample(n_test, generator)),
        )

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        return self.board.log_density(x)

    def plot_samples(self, samples: DataSplit, result: OracleResult, path: str, title: str):
        """Fig. 2: the samples, infracting ones in brown."""
        from genneg_checkerboard.plots import scatter_2d

        scatter_2d(samples.x, result.valid, path, title)


class CheckerboardOracle(Oracle):
    """``O(x) = 1`` inside a filled cell of the checkerboard."""

    categories = ("outside",)

    def __init__(self, n_cells: int = 4, half: float = 1.0):
        self.board = Board(n_cells, half)

    def label(self, x: torch.Tensor, cond: dict) -> OracleResult:
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"checkerboard samples must be [B, 2], got {tuple(x.shape)}")
        valid = self.board.inside(x)
        return OracleResult(valid=valid, categories={"outside": ~valid})
