"""The residual MLP of the paper's Fig. 5, for the denoiser and the classifier."""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_embedding(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sinusoidal features of the noise conditioning ``[B] -> [B, dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=c_noise.device) / half)
    args = c_noise.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResidualBlock(nn.Module):
    """``h + W2 SiLU(W1 SiLU(h) + Wt emb)``: two linear layers with the time embedding added
    between them (Fig. 5, right)."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.act = nn.SiLU()

    def forward(self, h, emb):
        return h + self.fc2(self.act(self.fc1(self.act(h)) + self.emb(emb)))


class ResidualMLP(nn.Module):
    """``F(x_in, c_noise)``: input layer, ``blocks`` residual blocks, output layer (Fig. 5).
    With hidden 256, embedding 128 and 2 blocks it has ~330k parameters, as in App. B.1."""

    def __init__(
        self, dim: int = 2, out_dim: int = 2, hidden: int = 256, emb_dim: int = 128, blocks: int = 2
    ):
        super().__init__()
        if min(dim, out_dim, hidden, emb_dim, blocks) < 1:
            raise ValueError("dim, out_dim, hidden, emb_dim and blocks must be >= 1")
        self.emb_dim = emb_dim
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden, emb_dim) for _ in range(blocks))
        self.out = nn.Linear(hidden, out_dim)
        self.act = nn.SiLU()

    def forward(self, x_in, c_noise, **cond):
        emb = sinusoidal_embedding(c_noise, self.emb_dim)
        h = self.inp(x_in)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.act(h))


class ResidualMLPClassifier(ResidualMLP):
    """The same network with one output logit per sample (App. B.1)."""

    granularity = "sample"

    def __init__(self, dim: int = 2, hidden: int = 256, emb_dim: int = 128, blocks: int = 2):
        super().__init__(dim=dim, out_dim=1, hidden=hidden, emb_dim=emb_dim, blocks=blocks)

    def forward(self, x_in, c_noise, **cond):
        return super().forward(x_in, c_noise).squeeze(-1)
