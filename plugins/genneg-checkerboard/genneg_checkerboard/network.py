"""The residual MLP of the paper's Fig. 5, for the denoiser and the classifier."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genneg.stacking import linear


def noise_rows(c_noise: torch.Tensor) -> torch.Tensor:
    """``c_noise[:1]`` when every row has the same noise level (a sampler's step), else
    ``c_noise``: the time embedding is then computed once and broadcast over the batch, which
    saves the embedding layers' products (a fifth of the network's FLOPs at hidden 128)."""
    if c_noise.dim() == 1 and c_noise.shape[0] > 1 and bool((c_noise == c_noise[0]).all()):
        return c_noise[:1]
    return c_noise


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
        emb = sinusoidal_embedding(noise_rows(c_noise), self.emb_dim)  # [B or 1, E]
        h = self.inp(x_in)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(self.act(h))


class ResidualMLPClassifier(ResidualMLP):
    """The same network with one output logit per sample (App. B.1)."""

    granularity = "sample"
    # Stacked (genneg.stacking) up to this batch: measured on one CPU thread (hidden 128, a
    # stack of 4), 0.84x the loop's time at batch 64, equal at 256, 1.15x at 5000.
    stack_max_batch = 256

    def __init__(self, dim: int = 2, hidden: int = 256, emb_dim: int = 128, blocks: int = 2):
        super().__init__(dim=dim, out_dim=1, hidden=hidden, emb_dim=emb_dim, blocks=blocks)

    def forward(self, x_in, c_noise, **cond):
        return super().forward(x_in, c_noise).squeeze(-1)

    def stacked_forward(self, params, buffers, x_in, c_noise, cache, **cond):
        """The logits ``[K, B]`` of K classifiers of one shape, their parameters stacked
        (:mod:`genneg.stacking`): each layer one batched product, the input and the
        sinusoidal embedding shared."""
        emb = sinusoidal_embedding(noise_rows(c_noise), self.emb_dim)  # [B or 1, E], shared
        h = linear(params, "inp", x_in, shared=True)  # [K, B, H]
        for i in range(len(self.blocks)):
            pre = f"blocks.{i}."
            t = linear(params, pre + "emb", emb, shared=True)
            a = linear(params, pre + "fc1", F.silu(h)) + t
            h = h + linear(params, pre + "fc2", F.silu(a))
        return linear(params, "out", F.silu(h)).squeeze(-1)

    def stacked_forward_vjp(self, params, buffers, x_in, c_noise, cache, **cond):
        """:meth:`stacked_forward`'s logits ``[K, B]`` and their pullback to ``x_in``, by hand
        (:mod:`genneg.stacking`): the backward pass of the residual blocks in reverse, each
        linear layer's input gradient one batched product with its weights and each SiLU's
        derivative one fused ``silu_backward``. The input layer's pullback sums the members
        in one product, ``[B, K H] @ [K H, D]``."""
        with torch.no_grad():
            emb = sinusoidal_embedding(noise_rows(c_noise), self.emb_dim)
            h = linear(params, "inp", x_in, shared=True)  # [K, B, H]
            saved = []
            for i in range(len(self.blocks)):
                pre = f"blocks.{i}."
                t = linear(params, pre + "emb", emb, shared=True)
                a = linear(params, pre + "fc1", F.silu(h)) + t
                saved.append((h, a))
                h = h + linear(params, pre + "fc2", F.silu(a))
            logits = linear(params, "out", F.silu(h)).squeeze(-1)

        def pullback(g: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                dh = _silu_backward(g[..., None] * params["out.weight"], h)  # [K, B, H]
                for i in reversed(range(len(self.blocks))):
                    pre = f"blocks.{i}."
                    h_in, a = saved[i]
                    da = _silu_backward(torch.bmm(dh, params[pre + "fc2.weight"]), a)
                    dh = dh + _silu_backward(torch.bmm(da, params[pre + "fc1.weight"]), h_in)
                k, b, width = dh.shape
                w_in = params["inp.weight"]  # [K, H, D]
                return dh.transpose(0, 1).reshape(b, k * width) @ w_in.reshape(k * width, -1)

        return logits, pullback


def _silu_backward(grad: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``grad * SiLU'(z)`` in one kernel (autograd's own derivative of ``F.silu``)."""
    return torch.ops.aten.silu_backward(grad, z)
