"""An MDM-compatible motion transformer (Tevet et al. 2023), adapted to genneg's contract.

The module tree mirrors the official ``MDM`` (``trans_enc`` architecture, HumanML3D ``hml_vec``
input) so that ``state_dict`` keys and shapes match its checkpoints, e.g. ``model000475000.pt``
of ``humanml_trans_enc_512``:

* ``input_process.poseEmbedding``: Linear(263 -> latent), per frame;
* ``sequence_pos_encoder.pe``: sinusoidal table ``[5000, 1, latent]`` (a buffer);
* ``embed_timestep``: ``time_embed`` = Linear, SiLU, Linear applied to ``pe[t]``; it holds the
  same positional encoder (hence ``embed_timestep.sequence_pos_encoder.pe``);
* ``embed_text``: Linear(512 -> latent) on the text embedding, added to the timestep token;
* ``seqTransEncoder``: ``nn.TransformerEncoder`` of post-norm GELU layers over
  ``[timestep token, frames...]`` (sequence-first);
* ``output_process.poseFinal``: Linear(latent -> 263).

MDM's tensors are ``[B, 263, 1, T]``; genneg's motions are ``[B, T, 263]``.
:meth:`MDM.forward` takes genneg's layout (``forward(x_in, c_noise, text=..., mask=...)`` with
``x_in`` DDPM's ``x_t`` and ``c_noise`` the step ``t``, an exact integer on the schedule's
levels) and :meth:`MDM.forward_mdm`
the upstream one. The model predicts ``x0`` under a 1000-step cosine DDPM
(``process.kind = "vp"``, ``schedule = "cosine"``, ``prediction = "x0"``).
The CLIP text tower is not part of the module (upstream checkpoints omit its weights too): text
arrives as an embedding in ``cond["text"]`` (see :mod:`genneg_motion.text`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genneg.stacking import batched_linear, layer_norm, linear
from genneg_motion import skeleton as sk


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding added to a sequence-first tensor, then dropout."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_len: int = 5000):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        pos = torch.arange(max_len, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("pe", pe[:, None, :])  # [max_len, 1, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe[: x.shape[0]])


class TimestepEmbedder(nn.Module):
    """``MLP(pe[t])`` as one token ``[1, B, d]``."""

    def __init__(self, latent_dim: int, sequence_pos_encoder: PositionalEncoding):
        super().__init__()
        self.latent_dim = latent_dim
        self.sequence_pos_encoder = sequence_pos_encoder
        self.time_embed = nn.Sequential(
            nn.Linear(latent_dim, latent_dim), nn.SiLU(), nn.Linear(latent_dim, latent_dim)
        )

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        pe = self.sequence_pos_encoder.pe
        if not torch.is_floating_point(timesteps):
            return self.time_embed(pe[timesteps]).permute(1, 0, 2)
        # Integer steps (all MDM was trained on, and all the DDPM sampler visits) index the
        # table exactly as upstream; a fractional step (another sampler's sigma) interpolates
        # linearly between its two neighbours.
        lo = timesteps.floor().long().clamp(0, pe.shape[0] - 1)
        hi = (lo + 1).clamp(max=pe.shape[0] - 1)
        w = (timesteps - lo.float())[:, None, None]
        return self.time_embed(pe[lo] * (1 - w) + pe[hi] * w).permute(1, 0, 2)


class InputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int):
        super().__init__()
        self.poseEmbedding = nn.Linear(input_feats, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, j, f, t = x.shape  # [B, 263, 1, T] -> [T, B, d]
        return self.poseEmbedding(x.permute(3, 0, 1, 2).reshape(t, b, j * f))


class OutputProcess(nn.Module):
    def __init__(self, input_feats: int, latent_dim: int, njoints: int, nfeats: int):
        super().__init__()
        self.njoints, self.nfeats = njoints, nfeats
        self.poseFinal = nn.Linear(latent_dim, input_feats)

    def forward(self, out: torch.Tensor) -> torch.Tensor:
        t, b, _ = out.shape  # [T, B, d] -> [B, 263, 1, T]
        return self.poseFinal(out).reshape(t, b, self.njoints, self.nfeats).permute(1, 2, 3, 0)


def check_steps(c_noise: torch.Tensor, max_len: int) -> torch.Tensor:
    """DDPM steps as a float tensor in ``[0, max_len - 1]``."""
    t = c_noise.float()
    if t.min() < 0 or t.max() > max_len - 1:
        raise ValueError(
            f"timesteps must lie in [0, {max_len - 1}], got {float(t.min())}..{float(t.max())}"
        )
    return t


class MDM(nn.Module):
    """The MDM denoiser (``trans_enc``), predicting ``x0``.

    :param latent_dim, ff_size, num_layers, num_heads, dropout, activation: the transformer
        (MDM's HumanML3D model: 512, 1024, 8, 4, 0.1, gelu).
    :param text: condition on ``cond["text"]`` (``[B, clip_dim]``); ``False`` builds the
        unconditioned model (no ``embed_text``).
    :param cond_mask_prob: probability of dropping the text while training (MDM: 0.1, which
        enables classifier-free guidance upstream).
    :param mask_frames: let attention ignore padded frames (upstream's 2022 models attend to
        them; a checkpoint loads either way).
    """

    def __init__(
        self,
        njoints: int = sk.FEATURE_DIM,
        nfeats: int = 1,
        latent_dim: int = 512,
        ff_size: int = 1024,
        num_layers: int = 8,
        num_heads: int = 4,
        dropout: float = 0.1,
        activation: str = "gelu",
        text: bool = True,
        clip_dim: int = 512,
        cond_mask_prob: float = 0.1,
        mask_frames: bool = False,
        max_len: int = 5000,
    ):
        super().__init__()
        self.njoints, self.nfeats, self.latent_dim = njoints, nfeats, latent_dim
        self.cond_mask_prob = cond_mask_prob
        self.mask_frames = mask_frames
        self.input_feats = njoints * nfeats
        self.input_process = InputProcess(self.input_feats, latent_dim)
        self.sequence_pos_encoder = PositionalEncoding(latent_dim, dropout, max_len)
        layer = nn.TransformerEncoderLayer(
            d_model=latent_dim,
            nhead=num_heads,
            dim_feedforward=ff_size,
            dropout=dropout,
            activation=activation,
        )
        self.seqTransEncoder = nn.TransformerEncoder(
            layer, num_layers=num_layers, enable_nested_tensor=False
        )
        self.embed_timestep = TimestepEmbedder(latent_dim, self.sequence_pos_encoder)
        self.embed_text = nn.Linear(clip_dim, latent_dim) if text else None
        self.output_process = OutputProcess(self.input_feats, latent_dim, njoints, nfeats)

    # --- upstream layout ---
    def _mask_text(self, emb: torch.Tensor, force_mask: bool) -> torch.Tensor:
        if force_mask:
            return torch.zeros_like(emb)
        if self.training and self.cond_mask_prob > 0:
            keep = torch.bernoulli(
                torch.full((emb.shape[0], 1), 1 - self.cond_mask_prob, device=emb.device)
            )
            return emb * keep
        return emb

    def encode(
        self, x: torch.Tensor, timesteps: torch.Tensor, text=None, mask=None, uncond: bool = False
    ) -> torch.Tensor:
        """Transformer output ``[T + 1, B, d]`` for ``x [B, 263, 1, T]`` (token 0: time)."""
        emb = self.embed_timestep(timesteps)  # [1, B, d]
        if self.embed_text is not None and text is not None:
            emb = emb + self.embed_text(self._mask_text(text.float(), uncond))[None]
        xseq = torch.cat([emb, self.input_process(x)], dim=0)
        xseq = self.sequence_pos_encoder(xseq)
        pad = None
        if self.mask_frames and mask is not None:
            pad = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], dim=1)
        return self.seqTransEncoder(xseq, src_key_padding_mask=pad)

    def forward_mdm(
        self, x: torch.Tensor, timesteps: torch.Tensor, text=None, mask=None, uncond: bool = False
    ) -> torch.Tensor:
        """Upstream signature: ``x [B, 263, 1, T]``, integer ``timesteps [B]`` -> ``x0``."""
        out = self.encode(x, timesteps, text, mask, uncond)[1:]
        return self.output_process(out)

    # --- genneg layout ---
    def forward(
        self, x_in: torch.Tensor, c_noise: torch.Tensor, text=None, mask=None, **unused
    ) -> torch.Tensor:
        """``x_in [B, T, 263]`` (DDPM's ``x_t``), ``c_noise [B]`` (step ``t``) ->
        ``x0 [B, T, 263]``."""
        t = check_steps(c_noise, self.sequence_pos_encoder.pe.shape[0])
        x = x_in.permute(0, 2, 1)[:, :, None, :]
        return self.forward_mdm(x, t, text, mask)[:, :, 0, :].permute(0, 2, 1)


class MDMClassifier(MDM):
    """The guidance classifier: MDM's architecture without the text encoder (Sec. 4.3).

    ``granularity="sample"`` (the paper's): one logit per motion, read from the timestep
    token's output. ``granularity="element"``: one logit per frame from each frame's output,
    trained on the oracle's per-frame labels, with ``log C(x) = sum_frames log C_frame`` (the
    by-agent construction of Sec. 4.2 applied to frames). Padded frames are masked out of
    attention by default, so a label does not depend on the length of the padding.
    """

    def __init__(
        self,
        latent_dim: int = 512,
        ff_size: int = 1024,
        num_layers: int = 8,
        num_heads: int = 4,
        dropout: float = 0.1,
        activation: str = "gelu",
        mask_frames: bool = True,
        granularity: str = "sample",
        njoints: int = sk.FEATURE_DIM,
        max_len: int = 5000,
    ):
        if granularity not in ("sample", "element"):
            raise ValueError(f"granularity must be 'sample' or 'element', got {granularity!r}")
        super().__init__(
            njoints=njoints,
            latent_dim=latent_dim,
            ff_size=ff_size,
            num_layers=num_layers,
            num_heads=num_heads,
            dropout=dropout,
            activation=activation,
            text=False,
            mask_frames=mask_frames,
            max_len=max_len,
        )
        self.granularity = granularity
        self.classifier_head = nn.Linear(latent_dim, 1)

    def forward(self, x_in: torch.Tensor, c_noise: torch.Tensor, mask=None, **unused):
        """Logits ``[B]`` (or ``[B, T]`` per frame) for ``x_in [B, T, 263]`` at ``c_noise``."""
        t = check_steps(c_noise, self.sequence_pos_encoder.pe.shape[0])
        x = x_in.permute(0, 2, 1)[:, :, None, :]
        h = self.encode(x, t, None, mask)
        if self.granularity == "sample":
            return self.classifier_head(h[0]).squeeze(-1)
        return self.classifier_head(h[1:]).squeeze(-1).permute(1, 0)

    def stacked_forward(self, params, buffers, x_in, c_noise, cache, mask=None, **unused):
        """The logits ``[K, B]`` (or ``[K, B, T]``) of K classifiers shaped like this one, their
        parameters stacked (:mod:`genneg.stacking`): :meth:`forward` with every linear layer
        one batched product over the members, attention batched over members and motions,
        the input and the timestep table shared. Eval mode only (no dropout)."""
        t = check_steps(c_noise, self.sequence_pos_encoder.pe.shape[0])
        pe = buffers["sequence_pos_encoder.pe"][:, 0]  # [max_len, d]
        if torch.is_floating_point(t):  # TimestepEmbedder: interpolated table rows
            lo = t.floor().long().clamp(0, pe.shape[0] - 1)
            hi = (lo + 1).clamp(max=pe.shape[0] - 1)
            w = (t - lo.float())[:, None]
            tab = pe[lo] * (1 - w) + pe[hi] * w
        else:
            tab = pe[t]
        emb = linear(params, "embed_timestep.time_embed.0", tab, shared=True)  # [K, B, d]
        emb = linear(params, "embed_timestep.time_embed.2", F.silu(emb))
        frames = linear(params, "input_process.poseEmbedding", x_in, shared=True)  # [K,B,T,d]
        h = torch.cat([emb[:, :, None], frames], dim=2)  # [K, B, S, d], token 0: time
        h = h + pe[: h.shape[2]]
        keep = None
        if self.mask_frames and mask is not None:  # attend to the time token and real frames
            keep = torch.cat([torch.ones_like(mask[:, :1]), mask.bool()], dim=1)[:, None, None]
        layers = self.seqTransEncoder.layers
        # one logit per motion reads the time token alone: the last layer's queries, attention
        # output and feed-forward are needed for that token only (its keys and values for all)
        first_only = self.granularity == "sample"
        for i, layer in enumerate(layers):
            last = first_only and i == len(layers) - 1
            h = _stacked_encoder_layer(params, f"seqTransEncoder.layers.{i}.", layer, h, keep, last)
        if self.granularity == "sample":
            return linear(params, "classifier_head", h[:, :, 0]).squeeze(-1)
        return linear(params, "classifier_head", h[:, :, 1:]).squeeze(-1)


def _stacked_encoder_layer(params, pre: str, layer, h, keep, first_only: bool = False):
    """``nn.TransformerEncoderLayer`` (post-norm, eval) of K members on ``h`` ``[K, B, S, d]``;
    ``keep`` bool ``[B, 1, 1, S]`` marks the keys to attend to (``None``: all). With
    ``first_only`` the output is token 0's alone, ``[K, B, 1, d]`` (the others' queries are not
    computed)."""
    if layer.norm_first:
        raise NotImplementedError("stacked MDM layers are post-norm, like MDM's")
    k, b, s, d = h.shape
    heads = layer.self_attn.num_heads
    w, bias = params[pre + "self_attn.in_proj_weight"], params[pre + "self_attn.in_proj_bias"]
    if first_only:
        q = batched_linear(w[:, :d], bias[:, :d], h[:, :, :1])
        kk, v = batched_linear(w[:, d:], bias[:, d:], h).chunk(2, dim=-1)
        h = h[:, :, :1]
    else:
        q, kk, v = batched_linear(w, bias, h).chunk(3, dim=-1)
    q, kk, v = (part.reshape(k * b, -1, heads, d // heads).transpose(1, 2) for part in (q, kk, v))
    if keep is not None:
        keep = keep.repeat(k, 1, 1, 1)
    a = F.scaled_dot_product_attention(q, kk, v, attn_mask=keep)  # [K*B, heads, S or 1, d/h]
    a = a.transpose(1, 2).reshape(k, b, -1, d)
    h = layer_norm(
        params, pre + "norm1", h + linear(params, pre + "self_attn.out_proj", a), layer.norm1.eps
    )
    ff = linear(params, pre + "linear2", layer.activation(linear(params, pre + "linear1", h)))
    return layer_norm(params, pre + "norm2", h + ff, layer.norm2.eps)


def load_mdm_checkpoint(model: MDM, path: str) -> None:
    """Load an official MDM checkpoint (``torch.load(weights_only=True)``), e.g.
    ``model000475000.pt``; CLIP weights, if present, are skipped (they are not ours)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("clip_model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this MDM: missing {missing}, unexpected {unexpected}"
        )
