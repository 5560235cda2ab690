"""The traffic transformer of App. B.2: denoiser and by-agent / by-scene classifiers.

* Encoder: a 2-layer SiLU MLP embeds each vehicle's 7 features into ``H`` dimensions; a
  sinusoidal embedding of the DDPM step ``t`` (``c_noise``) is added.
* Backbone: ``layers`` pairs of (self-attention across agents with relative positional
  encodings, cross-attention from agents to the map), each followed by a feed-forward block,
  with pre-LayerNorm residuals. The self-attention is Eqs. (35)-(36): pairwise distances
  ``d_ij`` are embedded sinusoidally, the time embedding is added (``p_ij``), and
  ``e_ij = (q_i.k_j + pQ_ij.k_j + q_i.pK_ij) / sqrt(d)``, ``out_i = sum_j a_ij (v_j + pV_ij)``.
* Map: a CNN (stride-2 convolutions + a 1x1 feed-forward) turns the ``[1, R, R]`` drivable-area
  raster into ``(R/8)^2`` tokens with a 2-D sinusoidal positional encoding. In addition to
  App. B.2, each agent's embedding gets a ``k x k`` patch of the raster read at its own position
  (:class:`LocalMap`), so that lane-level placement does not hinge on 8-pixel tokens.
* Agent-frame additions (options, off by default): ``pair_pose`` adds the pose of agent j in
  agent i's frame to ``p_ij`` (:class:`PairPose`); ``footprint`` reads the road's raster and
  signed distance -- and with ``lanes`` the lane fields -- on a grid over each agent's own
  rectangle (:class:`Footprint`). They need ``cond["feature_frame"]``, ``cond["sdf"]`` and
  ``cond["lanes"]`` (written by :class:`genneg_traffic.dataset.TrafficDataset`).
* Decoders: a 2-layer MLP to 7 features (denoiser, epsilon-prediction), to 1 logit per agent
  (by-agent classifier), or -- for the by-scene classifier -- a masked mean over agents followed
  by an MLP. (The paper's by-scene head reads the first agent's row; the mean keeps the head
  permutation-invariant, which a scene label is.)

Padding agents (``cond["mask"]`` False) are never attended to; their outputs are zero. Nothing
depends on the agents' order: the network is permutation-equivariant over agents.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genneg.stacking import batched_linear, layer_norm, linear
from genneg_traffic.features import N_FEATURES


def sinusoidal(v: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of ``v`` (any shape) -> ``[..., dim]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=v.device) / half)
    args = v.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, d_out))


class RPESelfAttention(nn.Module):
    """Multi-head self-attention with relative positional encodings (Eqs. 35-36)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads, self.d = heads, hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden)  # W^Q, W^K, W^V
        self.rpe = nn.Linear(hidden, 3 * hidden, bias=False)  # U^Q, U^K, U^V
        self.out = nn.Linear(hidden, hidden)

    def attend(self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor, t=None) -> torch.Tensor:
        """``sum_j a_ij (v_j + pV_ij)`` per head, heads concatenated: ``[B, A, H]``
        (:func:`rpe_attend`).

        :param x: ``[B, A, H]`` agent features; :param p: ``[B, A, A, H]`` pair encodings;
        :param mask: bool ``[B, A]`` (keys with False get no attention);
        :param t: ``[B, H]`` added to every pair encoding of a sample (``None``: nothing).
        """
        B, A, _ = x.shape
        q, k, v = self.qkv(x).view(1, B, A, 3, self.heads, self.d).unbind(3)  # [1, B, A, h, d]
        o = rpe_attend(q, k, v, self.rpe.weight[None], p, None if t is None else t[None], mask)
        return o.reshape(B, A, self.heads * self.d)

    def forward(self, x, p, mask, t=None):
        return self.out(self.attend(x, p, mask, t))


def rpe_attend(q, k, v, u, pair, t, mask) -> torch.Tensor:
    """Eqs. (35)-(36) for K sets of weights at once: ``[K, B, A, h, d]``, ``sum_j a_ij (v_j +
    pV_ij)`` per head.

    :param q, k, v: ``[K, B, A, h, d]`` queries, keys, values;
    :param u: ``[K, 3 H, H]`` the pair projections ``U^Q, U^K, U^V`` (``RPESelfAttention.rpe``);
    :param pair: ``[B, A, A, H]`` pair encodings shared by the K members;
    :param t: ``[K, B, H]`` an addition to every pair encoding of a sample (the time embedding),
        or ``None``: the members' ``p_ij`` is ``pair_ij + t``;
    :param mask: bool ``[B, A]`` (keys with False get no attention).

    The same sums as Eqs. (35)-(36) in another order, so the ``[B, A, A, 3 H]`` projected
    pairs are never formed:

    * ``pQ_ij.k_j = pair_ij.(U^Q_h^T k_j) + (U^Q_h t).k_j``: the second part joins ``q_i.k_j``;
    * ``q_i.pK_ij = pair_ij.(U^K_h^T q_i) + q_i.(U^K_h t)``: the second part is the same for
      every ``j``, and a softmax over ``j`` does not change when a row gains a constant;
    * ``sum_j a_ij pV_ij = U^V_h sum_j a_ij pair_ij + U^V_h t`` (the weights sum to one).

    Per sample and layer the pair terms take ``3 A^2 h H + 3 A h d H`` multiply-adds instead
    of ``3 A^2 H^2`` (16x fewer at H = 64, h = 4).
    """
    K, B, A, heads, d = q.shape
    H = pair.shape[-1]
    kh = K * heads
    uq, uk, uv = u.view(K, 3, heads, d, H).unbind(1)  # [K, h, d, H] each
    # U^Q_h^T k_j and U^K_h^T q_i: per member and head one [B A, d] @ [d, H] product
    kq = torch.matmul(k.permute(0, 3, 1, 2, 4).reshape(K, heads, B * A, d), uq)
    qk = torch.matmul(q.permute(0, 3, 1, 2, 4).reshape(K, heads, B * A, d), uk)
    if t is not None:
        q = q + torch.einsum("khdc,kbc->kbhd", uq, t)[:, :, None]
        v = v + torch.einsum("khdc,kbc->kbhd", uv, t)[:, :, None]
    # The pair terms as products batched over (b, j) and (b, i) with every member and head
    # side by side, [A, H] @ [H, K h]: contiguous operands whose backward products are too
    # (einsum's own order gave strided [A, H] items, two to four times slower on the CPU).
    kq = kq.reshape(kh, B, A, H).permute(1, 2, 3, 0)  # [B, A (j), H, K h]
    qk = qk.reshape(kh, B, A, H).permute(1, 2, 3, 0)  # [B, A (i), H, K h]
    e_k = torch.matmul(pair.transpose(1, 2), kq)  # [B, j, i, K h]: pair_ij . U^Q_h^T k_j
    e_q = torch.matmul(pair, qk)  # [B, i, j, K h]: pair_ij . U^K_h^T q_i
    e_pair = e_k.permute(3, 0, 2, 1) + e_q.permute(3, 0, 1, 2)  # [K h, B, i, j]
    e = torch.einsum("kbihd,kbjhd->kbhij", q, k) + e_pair.reshape(K, heads, B, A, A).transpose(1, 2)
    e = (e / math.sqrt(d)).masked_fill(~mask[None, :, None, None, :], -1e9)
    a = torch.softmax(e, dim=-1)  # [K, B, h, A, A]
    # sum_j a_ij pair_ij, batched over (b, i): [K h, A (j)] @ [A (j), H]
    s = torch.matmul(a.permute(1, 3, 0, 2, 4).reshape(B, A, kh, A), pair)  # [B, i, K h, H]
    s = s.reshape(B * A, K, heads, H).permute(1, 2, 0, 3)  # [K, h, B A, H]
    pv = torch.matmul(s, uv.transpose(-1, -2)).reshape(K, heads, B, A, d).permute(0, 2, 3, 1, 4)
    return torch.einsum("kbhij,kbjhd->kbihd", a, v) + pv


class MapEncoder(nn.Module):
    """CNN + feed-forward: a ``[B, C, R, R]`` raster -> ``[B, (R/8)^2, H]`` tokens with a 2-D
    sinusoidal positional encoding (half the channels for x, half for y)."""

    def __init__(self, hidden: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(width * 2, hidden, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1),  # position-wise feed-forward
        )
        self.hidden = hidden
        self._cache = None  # (raster, tokens) of the last call in eval mode

    def forward(self, raster: torch.Tensor) -> torch.Tensor:
        """Tokens of ``raster``. In eval mode, when no gradient can flow into the encoder's
        weights, the tokens of the last raster are reused if the very same tensor comes again
        (a sampler's every step; the tokens never depend on ``x``)."""
        frozen = not torch.is_grad_enabled() or not any(p.requires_grad for p in self.parameters())
        cacheable = not self.training and frozen
        if cacheable and self._cache is not None and self._cache[0] is raster:
            return self._cache[1]
        tokens = self._encode(raster)
        self._cache = (raster, tokens) if cacheable else None
        return tokens

    def _encode(self, raster: torch.Tensor) -> torch.Tensor:
        m = self.cnn(raster.float() * 2 - 1)  # {0, 1} -> {-1, 1}
        B, H, h, w = m.shape
        return m.flatten(2).transpose(1, 2) + map_positions(h, w, H, m.device)


def map_positions(h: int, w: int, hidden: int, device) -> torch.Tensor:
    """The 2-D sinusoidal positional encoding of the map's ``h x w`` token grid, ``[h * w,
    hidden]`` (App. B.2: the map tokens keep their place in the image)."""
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, device=device),
        torch.linspace(1, -1, w, device=device).flip(0),
        indexing="ij",
    )
    half = hidden // 2
    pos = torch.cat(
        [sinusoidal(xs * 50, half, 1000.0), sinusoidal(-ys * 50, hidden - half, 1000.0)], dim=-1
    )
    return pos.reshape(h * w, hidden)


def patch_grid(x_in, frame, raster_size: int, size: int, spacing: float = 1.0):
    """``[B, A, k*k, 2]`` ``grid_sample`` coordinates of a ``k x k`` grid of points ``spacing``
    pixels apart centred on each agent's position ``x_in[..., :2]`` (model units, mapped to the
    raster by ``frame``, ``cond["map_frame"]``), row-major from the top-left point."""
    a_x, b_x, a_y, b_y = frame.to(x_in.dtype).unbind(-1)[:4]  # [B] each
    u = a_x[:, None] * x_in[..., 0] + b_x[:, None]  # [B, A], -1 = left edge
    v = a_y[:, None] * x_in[..., 1] + b_y[:, None]  # [B, A], -1 = top row
    k = torch.arange(size, device=x_in.device, dtype=x_in.dtype) - (size - 1) / 2
    step = 2 * spacing * k / raster_size  # grid_sample units: 2 / R per pixel
    du, dv = torch.meshgrid(step, step, indexing="xy")
    return torch.stack([u[..., None] + du.reshape(-1), v[..., None] + dv.reshape(-1)], dim=-1)


class LocalMap(nn.Module):
    """The road around each agent: a ``k x k`` patch of the raster, one point per pixel,
    centred on the agent's (noisy) position and read by bilinear interpolation
    (``grid_sample``), embedded by an MLP into ``H``. An addition to App. B.2: the map tokens
    of the cross-attention are 8 pixels wide (10 m at the CPU preset's resolution), too coarse
    to keep a car inside a 3.2 m lane; the patch gives each agent the road at its own position
    at the raster's resolution, for ``k^2`` reads per agent. Needs ``cond["map_frame"]`` (model
    units -> raster coordinates, :func:`genneg_traffic.dataset.map_frame`); without it the
    agents get no patch."""

    def __init__(self, hidden: int, size: int = 7):
        super().__init__()
        self.size = size
        self.proj = mlp(size * size, hidden, hidden)

    def forward(self, x_in: torch.Tensor, raster: torch.Tensor, frame: torch.Tensor):
        """``[B, A, H]``: the embedded patch under each agent's position ``x_in[..., :2]``."""
        return self.proj(self.patch(x_in, raster, frame))

    def patch(self, x_in: torch.Tensor, raster: torch.Tensor, frame: torch.Tensor):
        """``[B, A, k*k]``: the raster (drivable +1, not drivable -1, outside 0) at the ``k x k``
        pixel-spaced points centred on each agent, row-major from the top-left point."""
        grid = patch_grid(x_in, frame, raster.shape[-1], self.size)  # one pixel apart
        img = raster.to(x_in.dtype) * 2 - 1  # {0, 1} -> {-1, 1}; outside the raster: 0
        return F.grid_sample(img, grid, align_corners=False, padding_mode="zeros")[:, 0]


#: metres per unit of the signed distance as the networks read it (:func:`_distance_field`)
DISTANCE_SCALE = 4.0


def _distance_field(sdf: torch.Tensor, dtype) -> torch.Tensor:
    """The signed distance to the road edge as :class:`WideMap` and :class:`Footprint` read
    it: metres / :data:`DISTANCE_SCALE` (4), clipped to +-2."""
    return (sdf.to(dtype) / DISTANCE_SCALE).clamp(-2, 2)


class WideMap(nn.Module):
    """The roads within about 15 m of each agent: a ``k x k`` grid of points ``spacing``
    pixels apart (the CPU preset's 7 x 7 at 4 pixels spans +-15 m), centred on the agent's
    (noisy) position in the window's frame, where the raster (drivable +1 / -1, outside the
    raster 0) and the signed distance to the road edge (metres / 4, clipped to +-2) are read
    by bilinear interpolation; an MLP embeds the ``2 k^2`` reads. An addition to App. B.2 (off
    by default, ``wide_map = [k, spacing]``): :class:`LocalMap` and :class:`Footprint` see
    about 4 m around a car, and beyond that the only road information is the cross-attention
    to 10 m map tokens, which has to learn where an agent is on the image from its
    coordinates; on a city the network has not seen, a car far from every road then has no
    local evidence where the road is (measured in docs/traffic.md)."""

    def __init__(self, hidden: int, size: int = 7, spacing: float = 4.0):
        super().__init__()
        if size < 2 or spacing <= 0:
            raise ValueError(f"wide_map needs size >= 2 and spacing > 0, got {size}, {spacing}")
        self.size, self.spacing = int(size), float(spacing)
        self.proj = mlp(2 * self.size**2, hidden, hidden)

    def read(self, x_in, raster, sdf, frame) -> torch.Tensor:
        """``[B, A, 2, k*k]``: raster and scaled signed distance at the grid points, row-major
        from the top-left point."""
        grid = patch_grid(x_in, frame, raster.shape[-1], self.size, self.spacing)
        chans = torch.cat([raster.to(x_in.dtype) * 2 - 1, _distance_field(sdf, x_in.dtype)], 1)
        out = F.grid_sample(chans, grid, align_corners=False, padding_mode="zeros")
        return out.permute(0, 2, 1, 3)  # [B, C, A, P] -> [B, A, C, P]

    def forward(self, x_in, raster, sdf, frame) -> torch.Tensor:
        return self.proj(self.read(x_in, raster, sdf, frame).flatten(-2))


def physical(x_in: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """Model-unit features ``[B, A, 7]`` -> physical units with ``frame`` ``[B, 14]`` (the
    normalisation's mean and std, ``cond["feature_frame"]``)."""
    mean, std = (
        frame.to(x_in.dtype)[:, None, :N_FEATURES],
        frame.to(x_in.dtype)[:, None, N_FEATURES:],
    )
    return x_in * std + mean


def unit_heading(phys: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` unit heading ``(cos, sin)`` of physical features (a zero vector stays
    finite: it is normalised with a floor)."""
    h = phys[..., 4:6]
    return h / h.norm(dim=-1, keepdim=True).clamp_min(1e-3)


class PairPose(nn.Module):
    """The pose of agent j in agent i's frame, embedded into ``H`` for the RPE pair encoding
    ``p_ij``. An addition to App. B.2's distance-only ``p_ij``: a collision depends on where
    j is relative to i's heading (ahead, beside) and on both sizes, not on the distance alone.
    Input per pair: Fourier features of ``(dx, dy) = R(-theta_i) (c_j - c_i)`` in metres at
    wavelengths ``1 .. 2^(freqs-1)`` m, ``cos/sin(theta_j - theta_i)``, the four sizes
    (metres / 5) and the gaps between the two rectangles along and across i's heading (j's
    half-extent projected on i's axes; metres / 5, clipped to +-4) and their maximum, which is
    negative when two aligned rectangles overlap; a 2-layer MLP to ``H``."""

    def __init__(self, hidden: int, freqs: int = 7):
        super().__init__()
        self.register_buffer("omega", 2 * math.pi / 2.0 ** torch.arange(freqs), persistent=False)
        self.proj = mlp(4 * freqs + 9, hidden, hidden)

    def features(self, phys: torch.Tensor) -> torch.Tensor:
        """``[B, A, A, 4 freqs + 9]`` pair inputs from physical features ``[B, A, 7]``."""
        h = unit_heading(phys)  # [B, A, 2]
        c, s = h[..., 0], h[..., 1]
        d = phys[:, None, :, :2] - phys[:, :, None, :2]  # [B, i, j, 2] = c_j - c_i
        dx = c[..., None] * d[..., 0] + s[..., None] * d[..., 1]  # along i's heading
        dy = -s[..., None] * d[..., 0] + c[..., None] * d[..., 1]  # to i's left
        cos_rel = c[:, :, None] * c[:, None, :] + s[:, :, None] * s[:, None, :]
        sin_rel = c[:, :, None] * s[:, None, :] - s[:, :, None] * c[:, None, :]
        args = torch.stack([dx, dy], -1)[..., None] * self.omega  # [B, A, A, 2, F]
        four = torch.cat([torch.cos(args), torch.sin(args)], -1).flatten(-2)
        A = phys.shape[1]
        size_i = phys[:, :, None, 2:4].expand(-1, -1, A, -1)
        size_j = phys[:, None, :, 2:4].expand(-1, A, -1, -1)
        li, wi, lj, wj = (v / 2 for v in (*size_i.unbind(-1), *size_j.unbind(-1)))
        gap_lon = dx.abs() - li - (lj * cos_rel.abs() + wj * sin_rel.abs())
        gap_lat = dy.abs() - wi - (lj * sin_rel.abs() + wj * cos_rel.abs())
        gaps = torch.stack([gap_lon, gap_lat, torch.maximum(gap_lon, gap_lat)], -1)
        return torch.cat(
            [
                four,
                cos_rel[..., None],
                sin_rel[..., None],
                size_i / 5,
                size_j / 5,
                (gaps / 5).clamp(-4, 4),
            ],
            -1,
        )

    def forward(self, phys: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(phys))


def rectangle_points(phys: torch.Tensor, grid, margin: float) -> torch.Tensor:
    """``[B, A, kl*kw, 2]`` physical positions of a ``kl x kw`` grid over each agent's
    rectangle grown by ``margin`` metres on every side (row-major along the length from the
    rear-right point)."""
    kl, kw = grid
    h = unit_heading(phys)
    half_l = phys[..., 2].clamp(0.5, 30.0) / 2 + margin
    half_w = phys[..., 3].clamp(0.5, 10.0) / 2 + margin
    fl = torch.linspace(-1, 1, kl, device=phys.device, dtype=phys.dtype)
    fw = torch.linspace(-1, 1, kw, device=phys.device, dtype=phys.dtype)
    shape = (*phys.shape[:2], kl, kw)
    a = (half_l[..., None, None] * fl[:, None]).expand(shape).flatten(-2)  # along
    b = (half_w[..., None, None] * fw[None, :]).expand(shape).flatten(-2)  # to the left
    c, s = h[..., 0:1], h[..., 1:2]
    px = phys[..., 0:1] + a * c - b * s
    py = phys[..., 1:2] + a * s + b * c
    return torch.stack([px, py], -1)


class Footprint(nn.Module):
    """The road under each agent's own rectangle: a ``kl x kw`` grid of points in the agent's
    frame spanning its (noisy) length and width plus ``margin`` metres on every side, where
    the raster (drivable +1 / -1) and the signed distance to the road edge (metres / 4,
    clipped to +-2) are read by bilinear interpolation; an MLP embeds the ``2 kl kw`` reads.
    An addition to App. B.2: offroad is decided by whether the rectangle's corners are on the
    road, to within ``offroad_tol`` = 0.2 m, finer than any raster patch; the signed distance
    varies linearly between pixels, so its interpolation is exact to well below a pixel.

    With ``lanes`` it also reads the lane fields (:mod:`genneg_traffic.lanes`): the lateral
    offset from the nearest lane centre (metres / 2, clipped to +-2) and the lane's direction
    of travel relative to the agent's heading, ``(cos, sin)`` of their difference, which
    locate the car within its lane and say whether it is aligned with it.

    With ``corners`` it also reads the signed distance (metres / 4, clipped to +-2) at the
    rectangle's own 3 x 3 grid without margin (its corners, edge midpoints and centre) and
    their minimum, the quantity the oracle thresholds at ``-offroad_tol``: the margin grid
    brackets the corners, so without it the MLP has to interpolate the rule from the reads
    around them (docs/traffic.md: the minimum alone separates offroad cars at AUC 0.98 on the
    posterior mean at sigma 0.03, the preset's classifier 0.73)."""

    #: the rectangle's own grid read by ``corners``: 3 x 3 points, no margin
    CORNER_GRID = (3, 3)

    def __init__(
        self,
        hidden: int,
        grid=(7, 5),
        margin: float = 1.0,
        lanes: bool = False,
        corners: bool = False,
    ):
        super().__init__()
        self.kl, self.kw = int(grid[0]), int(grid[1])
        if self.kl < 2 or self.kw < 2:
            raise ValueError(f"footprint grid must be at least 2 x 2, got {grid}")
        self.margin = margin
        self.lanes = lanes
        self.channels = 5 if lanes else 2
        self.corners = corners
        n_corner = self.CORNER_GRID[0] * self.CORNER_GRID[1] + 1 if corners else 0
        self.proj = mlp(self.channels * self.kl * self.kw + n_corner, hidden, hidden)

    def points(self, phys: torch.Tensor, grid=None, margin: float | None = None) -> torch.Tensor:
        """:func:`rectangle_points` with the module's grid and margin as defaults."""
        grid = grid if grid is not None else (self.kl, self.kw)
        return rectangle_points(phys, grid, self.margin if margin is None else margin)

    @staticmethod
    def _sample(fields, pts, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, C, P]``: the ``[B, C, R, R]`` fields read bilinearly at the physical
        points ``pts`` ``[B, A, P, 2]`` (the border's value beyond the raster)."""
        ff = feature_frame.to(pts.dtype)
        z = (pts - ff[:, None, None, 0:2]) / ff[:, None, None, N_FEATURES : N_FEATURES + 2]
        a_x, b_x, a_y, b_y = map_frame.to(pts.dtype).unbind(-1)[:4]
        u = a_x[:, None, None] * z[..., 0] + b_x[:, None, None]
        v = a_y[:, None, None] * z[..., 1] + b_y[:, None, None]
        grid = torch.stack([u, v], -1)  # [B, A, P, 2]
        out = F.grid_sample(fields, grid, align_corners=False, padding_mode="border")
        return out.permute(0, 2, 1, 3)  # [B, C, A, P] -> [B, A, C, P]

    @classmethod
    def distance_reads(cls, pts, sdf, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, P]``: the scaled signed distance (:func:`_distance_field`) read at the
        physical points ``pts`` ``[B, A, P, 2]``."""
        return cls._sample(_distance_field(sdf, pts.dtype), pts, map_frame, feature_frame)[:, :, 0]

    @classmethod
    def corner_reads(cls, phys, sdf, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, 10]``: the scaled signed distance at the rectangle's :data:`CORNER_GRID`
        (no margin) and, last, their minimum (see the class docstring)."""
        pts = rectangle_points(phys, cls.CORNER_GRID, 0.0)
        d = cls.distance_reads(pts, sdf, map_frame, feature_frame)
        return torch.cat([d, d.amin(-1, keepdim=True)], -1)

    def read(self, phys, raster, sdf, map_frame, feature_frame, lanes=None) -> torch.Tensor:
        """``[B, A, C, kl*kw]``: raster and scaled signed distance at :meth:`points` (and, with
        ``lanes``, the scaled offset and the lane direction in the agent's frame)."""
        chans = [raster.to(phys.dtype) * 2 - 1, _distance_field(sdf, phys.dtype)]
        if self.lanes:
            chans.append(lanes.to(phys.dtype))
        out = self._sample(torch.cat(chans, 1), self.points(phys), map_frame, feature_frame)
        if not self.lanes:
            return out
        h = unit_heading(phys)[..., None]  # [B, A, 2, 1]
        lc, ls = out[:, :, 3], out[:, :, 4]
        rel_c = lc * h[:, :, 0] + ls * h[:, :, 1]  # cos(lane - heading)
        rel_s = ls * h[:, :, 0] - lc * h[:, :, 1]  # sin(lane - heading)
        offset = (out[:, :, 2] / 2).clamp(-2, 2)
        return torch.stack([out[:, :, 0], out[:, :, 1], offset, rel_c, rel_s], 2)

    def forward(self, phys, raster, sdf, map_frame, feature_frame, lanes=None):
        reads = self.read(phys, raster, sdf, map_frame, feature_frame, lanes).flatten(-2)
        if self.corners:
            reads = torch.cat([reads, self.corner_reads(phys, sdf, map_frame, feature_frame)], -1)
        return self.proj(reads)


class RoadGradients(nn.Module):
    """A correction along the road edge's exact directions (``road_gradients`` of
    :class:`TrafficDenoiser`; ours, for the residual student's correction network,
    :mod:`genneg.student`): per agent, ``sum_k c_k(h) grad_x d_k(x)``, where ``d_k`` is the
    scaled signed distance to the road edge read at point ``k`` of the agent's rectangle (the
    :data:`Footprint.CORNER_GRID` without margin and the footprint's ``kl x kw`` grid with its
    margin), ``grad_x`` its derivative in the agent's own 7 model-unit features and ``c_k``
    ``K`` coefficients from the agent's backbone features (a LayerNorm and a linear layer,
    zero at the start).

    Why: the teacher's offroad term is the input gradient of its classifiers'
    ``log C`` (Eq. 9), which reaches the agent's features through the road reads:
    ``sum_k (d log C / d d_k) grad_x d_k``. The directions ``grad_x d_k`` are geometry of the
    map, the same in every city; a plain output head has to infer them from the reads' values
    on the training cities' maps, and the session-20 student's offroad did not carry to the
    held-out city (docs/traffic.md). With this head the network learns only how hard to push
    along each read's direction. Measured (session 21): the student's offroad rate did not
    move on any split, so no preset sets it.

    The derivatives are central differences of step :data:`STEP` model units (about 1-3 cm
    for the preset's position scales): the signed distance is bilinear between pixels, so
    they are exact away from pixel edges and a one-step average across them. Beyond the
    distance field's clip (8 m, :func:`_distance_field`) they are zero."""

    #: central-difference step in model units
    STEP = 1e-3

    def __init__(self, hidden: int, grid=(7, 5), margin: float = 1.0):
        super().__init__()
        self.grids = ((Footprint.CORNER_GRID, 0.0), ((int(grid[0]), int(grid[1])), margin))
        self.n_points = sum(kl * kw for (kl, kw), _ in self.grids)
        self.coef = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, self.n_points))
        with torch.no_grad():
            self.coef[1].weight.zero_()
            self.coef[1].bias.zero_()

    def reads(self, x_in, sdf, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, K]``: the scaled signed distance at the ``K`` points of each agent's
        rectangle for features ``x_in`` ``[B, A, 7]``."""
        phys = physical(x_in, feature_frame)
        pts = torch.cat([rectangle_points(phys, g, m) for g, m in self.grids], -2)
        return Footprint.distance_reads(pts, sdf, map_frame, feature_frame)

    def directions(self, x_in, sdf, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, K, 7]``: ``grad_x d_k`` per agent, by central differences in each of
        the agent's features (one read of all ``2 * 7`` shifted copies at once)."""
        B, A, n = x_in.shape
        step = self.STEP * torch.eye(n, device=x_in.device, dtype=x_in.dtype)
        x = x_in[:, None]
        shifted = torch.cat([x + step[None, :, None], x - step[None, :, None]], 1)  # [B,2n,A,n]
        d = self.reads(shifted.reshape(B, 2 * n * A, n), sdf, map_frame, feature_frame)
        plus, minus = d.view(B, 2, n, A, -1).unbind(1)  # [B, 7, A, K] each
        return ((plus - minus) / (2 * self.STEP)).permute(0, 2, 3, 1)

    def forward(self, h, x_in, sdf, map_frame, feature_frame) -> torch.Tensor:
        """``[B, A, 7]``: the correction for backbone features ``h`` ``[B, A, H]``."""
        g = self.directions(x_in, sdf, map_frame, feature_frame)
        return (self.coef(h)[..., None] * g).sum(-2)


class Block(nn.Module):
    """One backbone pair: RPE self-attention + FF, map cross-attention + FF (pre-LN)."""

    def __init__(self, hidden: int, heads: int, ff_mult: int):
        super().__init__()
        self.ln1, self.ln2, self.ln3, self.ln4 = (nn.LayerNorm(hidden) for _ in range(4))
        self.self_attn = RPESelfAttention(hidden, heads)
        self.cross = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ff1 = mlp(hidden, ff_mult * hidden, hidden)
        self.ff2 = mlp(hidden, ff_mult * hidden, hidden)

    def forward(self, x, p, mask, tokens, t=None):
        """``p`` ``[B, A, A, H]`` pair encodings, to which ``t`` ``[B, H]`` (the time
        embedding) is added (:func:`rpe_attend`)."""
        x = x + self.self_attn(self.ln1(x), p, mask, t)
        x = x + self.ff1(self.ln2(x))
        q = self.ln3(x)
        x = x + self.cross(q, tokens, tokens, need_weights=False)[0]
        x = x + self.ff2(self.ln4(x))
        return x * mask[..., None]


class TrafficBackbone(nn.Module):
    """Encoder + backbone: ``(x_in [B, A, 7], t [B], mask, map)`` -> ``[B, A, H]``."""

    def __init__(
        self,
        hidden: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_mult: int = 2,
        map_width: int = 32,
        distance_scale: float = 100.0,
        local_map: int = 7,
        pair_pose: bool = False,
        footprint=None,
        lanes: bool = False,
        corners: bool = False,
        wide_map=None,
    ):
        super().__init__()
        self.hidden = hidden
        self.distance_scale = distance_scale
        self.embed = mlp(N_FEATURES, hidden, hidden)
        self.time = mlp(hidden, hidden, hidden)
        self.map = MapEncoder(hidden, width=map_width)
        self.local = LocalMap(hidden, local_map) if local_map else None
        self.pose = PairPose(hidden) if pair_pose else None
        if lanes and not footprint:
            raise ValueError("lanes are read by the footprint: set footprint too")
        if corners and not footprint:
            raise ValueError("corners are read by the footprint: set footprint too")
        self.footprint = (
            Footprint(hidden, footprint, lanes=lanes, corners=corners) if footprint else None
        )
        self.wide = WideMap(hidden, *wide_map) if wide_map else None
        self.blocks = nn.ModuleList(Block(hidden, heads, ff_mult) for _ in range(layers))

    def pair_encoding(self, x_in: torch.Tensor) -> torch.Tensor:
        """The sinusoidal embedding of the distance between agents i and j (in input units,
        scaled by ``distance_scale``), ``[B, A, A, H]``. Eq. (35)'s ``p_ij`` is this plus the
        time embedding, which the blocks add inside the attention (:func:`rpe_attend`)."""
        pos = x_in[..., :2]
        d = torch.sqrt(((pos[:, :, None] - pos[:, None, :]) ** 2).sum(-1) + 1e-12)
        return sinusoidal(d * self.distance_scale, self.hidden)

    def forward(
        self,
        x_in,
        c_noise,
        mask=None,
        map=None,
        map_frame=None,
        feature_frame=None,
        sdf=None,
        lanes=None,
    ):
        B, A, _ = x_in.shape
        if mask is None:
            mask = torch.ones(B, A, dtype=torch.bool, device=x_in.device)
        if map is None:
            raise ValueError("the traffic network needs cond['map'] (the rasterised road)")
        needs = {
            "pair_pose": (self.pose, ("feature_frame",)),
            "footprint": (self.footprint, ("feature_frame", "sdf", "map_frame")),
            "lanes": (
                self.footprint if self.footprint and self.footprint.lanes else None,
                ("lanes",),
            ),
            "wide_map": (self.wide, ("sdf", "map_frame")),
        }
        given = {"feature_frame": feature_frame, "sdf": sdf, "map_frame": map_frame, "lanes": lanes}
        for option, (module, keys) in needs.items():
            missing = [k for k in keys if module is not None and given[k] is None]
            if missing:
                raise ValueError(f"the traffic network's {option} needs cond {missing}")
        temb = self.time(sinusoidal(c_noise.reshape(B).to(x_in.device), self.hidden))
        h = self.embed(x_in) + temb[:, None, :]
        if self.local is not None and map_frame is not None:
            h = h + self.local(x_in, map, map_frame)
        phys = physical(x_in, feature_frame) if feature_frame is not None else None
        if self.footprint is not None:
            h = h + self.footprint(phys, map, sdf, map_frame, feature_frame, lanes)
        if self.wide is not None:
            h = h + self.wide(x_in, map, sdf, map_frame)
        h = h * mask[..., None]
        p = self.pair_encoding(x_in)
        if self.pose is not None:
            p = p + self.pose(phys)
        tokens = self.map(map)
        for block in self.blocks:
            h = block(h, p, mask, tokens, temb)
        return h


def _extra(cond: dict) -> tuple:
    """The optional conditions of :meth:`TrafficBackbone.forward` after ``map_frame``."""
    return cond.get("feature_frame"), cond.get("sdf"), cond.get("lanes")


class TrafficDenoiser(nn.Module):
    """The DDPM network (epsilon-prediction): ``forward(x_in, c_noise, **cond)`` -> ``[B, A, 7]``.

    Options: ``hidden`` (H), ``heads``, ``layers`` (self/cross pairs), ``ff_mult``,
    ``map_width`` (CNN channels), ``distance_scale`` (RPE frequency scale), ``local_map``
    (side of the road patch read at each agent's position, :class:`LocalMap`; 0 = none),
    ``pair_pose`` (:class:`PairPose`), ``footprint``, ``lanes`` and ``corners``
    (:class:`Footprint`),
    ``wide_map`` (``[k, spacing]``, :class:`WideMap`; off by default), ``road_gradients``
    (adds :class:`RoadGradients` to the output, on the footprint's grid; off by default: the
    residual student's correction network sets it through ``distill.correction``).
    """

    def __init__(self, road_gradients: bool = False, **options):
        super().__init__()
        self.backbone = TrafficBackbone(**options)
        h = self.backbone.hidden
        fp = self.backbone.footprint
        if road_gradients and fp is None:
            raise ValueError("road_gradients reads the footprint's grid: set footprint too")
        # registered before the head, whose last linear layer stays the network's last
        # (genneg.student.zero_output_layer)
        self.road = RoadGradients(h, (fp.kl, fp.kw), fp.margin) if road_gradients else None
        self.head = nn.Sequential(nn.LayerNorm(h), mlp(h, h, N_FEATURES))

    def forward(self, x_in, c_noise, mask=None, map=None, map_frame=None, **cond):
        if mask is None:
            mask = torch.ones(x_in.shape[:2], dtype=torch.bool, device=x_in.device)
        h = self.backbone(x_in, c_noise, mask, map, map_frame, *_extra(cond))
        out = self.head(h)
        if self.road is not None:
            out = out + self.road(h, x_in, cond.get("sdf"), map_frame, cond.get("feature_frame"))
        return out * mask[..., None]


class CornerLogit(nn.Module):
    """A by-agent logit term read off the agent's own rectangle (an addition to App. B.2;
    ``corner_logit`` of :class:`TrafficClassifier`): ``softplus(a(t)) * asinh(d / 0.25 m)``,
    where ``d`` is the signed distance to the road edge at the worst of the rectangle's
    corners, edge midpoints and centre (the minimum of :meth:`Footprint.corner_reads`, the
    quantity the oracle's offroad test thresholds at ``-offroad_tol``) and ``a(t)`` an MLP of
    the noise level, added to the backbone's logit.

    Why: the backbone sees the same reads among 185 others and, trained on a few hundred
    offroad cars, separates them at AUC 0.73 where the minimum alone gives 0.98 (at sigma
    0.03; docs/traffic.md). The term is a logistic regression on that one read at each noise
    level, monotone by construction (a car further inside the road is never less likely to
    be on it: at sigma -> 0 that is the oracle's rule), so its input gradient points onto the
    road at every level; ``a(t)`` learns how much the read says at each level. (A free MLP of
    the reads and the noise level was tried first and stayed within 0.02-0.07 nats of a
    constant after training: docs/traffic.md.) The asinh keeps a gradient for cars far off
    the road."""

    #: width of the noise level's sinusoidal embedding
    TIME_DIM = 16
    #: metres: the read enters as ``asinh(distance / READ_SCALE)``, about the oracle's 0.2 m
    #: tolerance (an offroad car at -0.25 m: -0.88; a clean one at +0.5 m: +1.44)
    READ_SCALE = 0.25

    #: decay lengths (in ``c_noise`` units: DDPM steps for the VP process) of the
    #: ``exp(-c_noise / L)`` features that join the sinusoidal embedding: the read decides
    #: offroad only at the lowest levels (t <= 8 of 100, sigma <= 0.3), which the sinusoidal
    #: features alone leave to the MLP to carve out of 3-8 % of the training minibatches
    DECAYS = (2.0, 8.0)

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.slope = mlp(self.TIME_DIM + len(self.DECAYS), hidden, 1)

    def noise_features(self, c_noise: torch.Tensor, dtype) -> torch.Tensor:
        """``[B, TIME_DIM + len(DECAYS)]``: the sinusoidal embedding of ``c_noise`` ``[B]`` and
        its :data:`DECAYS` features."""
        decays = torch.tensor(self.DECAYS, device=c_noise.device)
        low = torch.exp(-c_noise.float()[:, None] / decays)
        return torch.cat([sinusoidal(c_noise, self.TIME_DIM), low], -1).to(dtype)

    def read(self, x_in, map_frame, feature_frame, sdf) -> torch.Tensor:
        """``[B, A]``: ``asinh(d / READ_SCALE)`` for features ``x_in`` ``[B, A, 7]``."""
        phys = physical(x_in, feature_frame)
        reads = Footprint.corner_reads(phys, sdf, map_frame, feature_frame)
        return torch.asinh(reads[..., -1] * (DISTANCE_SCALE / self.READ_SCALE))  # to metres

    def forward(self, x_in, c_noise, map_frame, feature_frame, sdf) -> torch.Tensor:
        """``[B, A]``: the term for features ``x_in`` ``[B, A, 7]`` (model units)."""
        B = x_in.shape[0]
        t = self.noise_features(c_noise.reshape(B).to(x_in.device), x_in.dtype)
        slope = F.softplus(self.slope(t))  # [B, 1]
        return slope * self.read(x_in, map_frame, feature_frame, sdf)


class TrafficClassifier(nn.Module):
    """Time-dependent classifier: ``granularity="element"`` gives one logit per agent
    ``[B, A]`` (by-agent), ``"sample"`` one per scene ``[B]`` (by-scene, masked mean pooling).
    ``corner_logit`` (by-agent, with ``footprint``) adds :class:`CornerLogit` to each agent's
    logit. Other options as :class:`TrafficDenoiser`."""

    def __init__(self, granularity: str = "element", corner_logit: bool = False, **options):
        super().__init__()
        if granularity not in ("element", "sample"):
            raise ValueError(f"granularity must be 'element' or 'sample', got {granularity!r}")
        self.granularity = granularity
        self.backbone = TrafficBackbone(**options)
        h = self.backbone.hidden
        self.head = nn.Sequential(nn.LayerNorm(h), mlp(h, h, 1 if granularity == "element" else h))
        self.scene_head = mlp(h, h, 1) if granularity == "sample" else None
        if corner_logit and granularity != "element":
            raise ValueError("corner_logit is a by-agent term: it needs granularity 'element'")
        if corner_logit and self.backbone.footprint is None:
            raise ValueError("corner_logit reads the footprint's corners: set footprint too")
        self.corner_logit = CornerLogit() if corner_logit else None

    def forward(self, x_in, c_noise, mask=None, map=None, map_frame=None, **cond):
        if mask is None:
            mask = torch.ones(x_in.shape[:2], dtype=torch.bool, device=x_in.device)
        h = self.head(self.backbone(x_in, c_noise, mask, map, map_frame, *_extra(cond)))
        if self.granularity == "element":
            h = h.squeeze(-1)
            if self.corner_logit is not None:
                feature_frame, sdf, _ = _extra(cond)
                h = h + self.corner_logit(x_in, c_noise, map_frame, feature_frame, sdf)
            return h * mask
        m = mask[..., None].to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.scene_head(pooled).squeeze(-1)

    @property
    def can_stack(self) -> bool:
        """Whether :meth:`stacked_forward` covers this network's options: not yet the
        agent-frame additions (pair poses, footprint, wide map), whose stacks take the
        per-classifier path of :mod:`genneg.stacking`."""
        bb = self.backbone
        return bb.pose is None and bb.footprint is None and bb.wide is None

    def stacked_forward(
        self, params, buffers, x_in, c_noise, cache, mask=None, map=None, map_frame=None, **_
    ):
        """The logits ``[K, B, A]`` (or ``[K, B]``) of K classifiers shaped like this one, their
        parameters stacked (:mod:`genneg.stacking`): :meth:`forward` with every linear layer
        one batched product over the members and the weight-free parts (sinusoidal distance
        features, the road patches) computed once. The map tokens and their cross-attention
        keys and values do not depend on ``x``: they are kept in ``cache`` for the raster last
        seen (a sampler's every step), like :class:`MapEncoder` does."""
        bb = self.backbone
        B, A, _ = x_in.shape
        if mask is None:
            mask = torch.ones(B, A, dtype=torch.bool, device=x_in.device)
        if map is None:
            raise ValueError("the traffic network needs cond['map'] (the rasterised road)")
        P = {k[len("backbone.") :]: v for k, v in params.items() if k.startswith("backbone.")}
        m = mask[..., None].to(x_in.dtype)
        temb = _mlp(
            P, "time", sinusoidal(c_noise.reshape(B).to(x_in.device), bb.hidden), shared=True
        )
        h = _mlp(P, "embed", x_in, shared=True) + temb[:, :, None, :]  # [K, B, A, H]
        if bb.local is not None and map_frame is not None:
            h = h + _mlp(P, "local.proj", bb.local.patch(x_in, map, map_frame), shared=True)
        h = h * m
        pair = bb.pair_encoding(x_in)  # shared; p_ij = pair_ij + temb (rpe_attend)
        kv = cache.get("map")
        if kv is None or kv[0] is not map:
            kv = (map, _stacked_map_kv(P, bb, map))
            cache["map"] = kv
        for i, block in enumerate(bb.blocks):
            h = _stacked_block(P, f"blocks.{i}.", block, h, pair, temb, mask, kv[1][i])
        h = _mlp(params, "head.1", _ln(params, "head.0", h))
        if self.granularity == "element":
            return h.squeeze(-1) * mask
        pooled = (h * m).sum(2) / m.sum(1).clamp_min(1.0)
        return _mlp(params, "scene_head", pooled).squeeze(-1)


def _mlp(P, name, h, shared=False):
    """K members' :func:`mlp` (Linear, SiLU, Linear) called ``name``."""
    return linear(P, f"{name}.2", F.silu(linear(P, f"{name}.0", h, shared=shared)))


def _ln(P, name, h):
    return layer_norm(P, name, h)


def _stacked_map_kv(P, bb, raster):
    """Per block, the cross-attention keys and values of the K members' map tokens
    (:class:`MapEncoder` with stacked weights: grouped convolutions), as
    :func:`_small_attention` takes them: the keys ``[K * B, heads, d, T]`` (transposed, scaled
    by ``1 / sqrt(d)``), the values ``[K * B, heads, T, d]``."""
    k = P["map.cnn.0.weight"].shape[0]
    img = raster.float() * 2 - 1
    y = img
    for j, i in enumerate((0, 2, 4, 6)):
        w, b = P[f"map.cnn.{i}.weight"], P[f"map.cnn.{i}.bias"]
        conv = bb.map.cnn[i]
        groups = 1 if j == 0 else k  # the raster is shared; then each member its own channels
        y = F.conv2d(y, w.flatten(0, 1), b.flatten(), conv.stride, conv.padding, groups=groups)
        if i != 6:
            y = F.silu(y)
    Bm, _, hh, ww = y.shape
    H = bb.hidden
    pos = map_positions(hh, ww, H, y.device)  # MapEncoder's, on the members' tokens
    tokens = y.reshape(Bm, k, H, hh * ww).permute(1, 0, 3, 2) + pos  # [K, B, T, H]
    out = []
    for i, block in enumerate(bb.blocks):
        heads = block.cross.num_heads
        w = P[f"blocks.{i}.cross.in_proj_weight"]
        b = P[f"blocks.{i}.cross.in_proj_bias"]
        kk = batched_linear(w[:, H : 2 * H], b[:, H : 2 * H], tokens)
        vv = batched_linear(w[:, 2 * H :], b[:, 2 * H :], tokens)
        kk, vv = (t.reshape(k * Bm, hh * ww, heads, H // heads).transpose(1, 2) for t in (kk, vv))
        # kept as the products of _small_attention take them, so no step copies them again:
        # keys transposed and scaled by 1 / sqrt(d), both contiguous
        out.append(((kk.transpose(-1, -2) / math.sqrt(H // heads)).contiguous(), vv.contiguous()))
    return out


def _stacked_block(P, pre, block, x, pair, temb, mask, kv):
    """:class:`Block` of K members: ``x`` ``[K, B, A, H]``; the members' pair encodings are
    ``pair`` ``[B, A, A, H]`` (shared) plus their time embeddings ``temb`` ``[K, B, H]``."""
    K, B, A, H = x.shape
    att = block.self_attn
    h_, d = att.heads, att.d
    y = _ln(P, pre + "ln1", x)
    q, k, v = linear(P, pre + "self_attn.qkv", y).view(K, B, A, 3, h_, d).unbind(3)
    o = rpe_attend(q, k, v, P[pre + "self_attn.rpe.weight"], pair, temb, mask)
    x = x + linear(P, pre + "self_attn.out", o.reshape(K, B, A, H))
    x = x + _mlp(P, pre + "ff1", _ln(P, pre + "ln2", x))
    heads = block.cross.num_heads
    w, b = P[pre + "cross.in_proj_weight"], P[pre + "cross.in_proj_bias"]
    qq = batched_linear(w[:, :H], b[:, :H], _ln(P, pre + "ln3", x))
    qq = qq.reshape(K * B, A, heads, H // heads).transpose(1, 2)
    c = _small_attention(qq, kv[0], kv[1]).transpose(1, 2).reshape(K, B, A, H)
    x = x + linear(P, pre + "cross.out_proj", c)
    x = x + _mlp(P, pre + "ff2", _ln(P, pre + "ln4", x))
    return x * mask[..., None]


def _small_attention(q, k_t, v) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` with the keys given transposed and scaled, ``k_t = k^T /
    sqrt(d)`` ``[..., d, T]`` (:func:`_stacked_map_kv`): two batched products, which is what
    ``F.scaled_dot_product_attention`` computes, faster on the CPU for a few queries per sample
    (the stacked traffic classifiers' map cross-attention, 6 queries and 64 keys per head: CPU
    flash attention's backward alone took a fifth of the stack's time)."""
    return torch.matmul(torch.softmax(torch.matmul(q, k_t), dim=-1), v)


def by_agent_classifier(**options) -> TrafficClassifier:
    """Registered as classifier ``traffic-agent``."""
    return TrafficClassifier(granularity="element", **options)


def by_scene_classifier(**options) -> TrafficClassifier:
    """Registered as classifier ``traffic-scene``."""
    return TrafficClassifier(granularity="sample", **options)
