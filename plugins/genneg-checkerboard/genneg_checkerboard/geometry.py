"""The checkerboard: a square ``[-half, half]^2`` cut into ``n x n`` cells, the cells with an
even index sum filled."""

from __future__ import annotations

import math

import torch


class Board:
    """Geometry of the checkerboard (cells ``(i, j)`` with ``i + j`` even are filled)."""

    def __init__(self, n: int = 4, half: float = 1.0):
        if n < 2:
            raise ValueError(f"a checkerboard needs n >= 2 cells per side, got {n}")
        if not half > 0:
            raise ValueError(f"half must be > 0, got {half}")
        self.n = n
        self.half = half
        self.cell = 2 * half / n

    @property
    def filled_cells(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(self.n) for j in range(self.n) if (i + j) % 2 == 0]

    @property
    def filled_area(self) -> float:
        return len(self.filled_cells) * self.cell**2

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """True where a point lies in a filled cell (cell boundaries count as inside)."""
        u = (x + self.half) / self.cell  # cell coordinates
        in_box = ((u >= 0) & (u <= self.n)).all(dim=-1)
        # A point on a boundary belongs to every cell it touches; it is inside if any of
        # those cells is filled. Check the cells of floor(u) and floor(u - eps), with eps
        # (in cell units) above float32 round-off, so a boundary point is inside.
        eps = 1e-5
        hits = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        for dx in (0.0, eps):
            for dy in (0.0, eps):
                i = torch.floor(u[..., 0] - dx).clamp(0, self.n - 1)
                j = torch.floor(u[..., 1] - dy).clamp(0, self.n - 1)
                hits |= (i + j) % 2 == 0
        return in_box & hits

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n`` points uniform on the filled cells."""
        cells = torch.tensor(self.filled_cells, dtype=torch.float32)
        pick = torch.randint(0, len(cells), (n,), generator=generator)
        offset = torch.rand(n, 2, generator=generator)
        return (cells[pick] + offset) * self.cell - self.half

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of the uniform distribution on the filled cells (-inf outside)."""
        inside = self.inside(x)
        value = -math.log(self.filled_area)
        return torch.where(
            inside, torch.full(inside.shape, value), torch.full(inside.shape, -math.inf)
        )
