"""Pluggable text encoders: captions -> ``[B, 512]`` embeddings stored in ``cond["text"]``.

* ``none``: no text conditioning (the model runs unconditioned);
* ``bow``: a bag of hashed words, each word a fixed random unit vector (seeded by the word's
  hash), averaged and normalised; needs nothing, used by the download-free presets;
* ``clip``: OpenAI CLIP ViT-B/32's text tower, as MDM uses it (captions truncated to 20 tokens);
  needs the ``clip`` package and its weights on the user's machine.
"""

from __future__ import annotations

import hashlib
import re

import torch

TEXT_DIM = 512
ENCODERS = ("none", "bow", "clip")


class BagOfWordsEncoder:
    """Deterministic hashed bag-of-words embeddings (no download)."""

    dim = TEXT_DIM

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little") >> 1
        v = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        return v / v.norm()

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = torch.zeros(len(captions), self.dim)
        cache: dict[str, torch.Tensor] = {}
        for i, cap in enumerate(captions):
            words = re.findall(r"[a-z]+", cap.lower())
            if not words:
                continue
            vecs = [cache.setdefault(w, self._word(w)) for w in words]
            v = torch.stack(vecs).mean(0)
            out[i] = v / v.norm().clamp_min(1e-8)
        return out


class ClipEncoder:
    """CLIP's text tower (MDM's ``clip_encode_text``: context of 20 tokens plus start/end)."""

    dim = TEXT_DIM

    def __init__(self, version: str = "ViT-B/32", device: str = "cpu"):
        try:
            import clip  # type: ignore
        except ImportError:
            raise ImportError(
                "text encoder 'clip' needs OpenAI's CLIP package "
                "(pip install git+https://github.com/openai/CLIP) and its "
                "weights; use text_encoder='bow' or 'none' without it"
            ) from None
        self._clip = clip
        self.model, _ = clip.load(version, device=device, jit=False)
        self.model.eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        tokens = self._clip.tokenize(captions, context_length=22, truncate=True)
        pad = torch.zeros(tokens.shape[0], 77 - 22, dtype=tokens.dtype)
        tokens = torch.cat([tokens, pad], 1).to(self.device)
        return self.model.encode_text(tokens).float().cpu()


def make_text_encoder(name: str):
    """The encoder called ``name`` (``None`` for ``none``)."""
    if name == "none":
        return None
    if name == "bow":
        return BagOfWordsEncoder()
    if name == "clip":
        return ClipEncoder()
    raise ValueError(f"unknown text encoder {name!r}; choose from {ENCODERS}")


def encode(name: str, captions: list[str], batch_size: int = 256) -> torch.Tensor | None:
    """Embeddings ``[B, 512]`` of ``captions`` with encoder ``name`` (``None`` for ``none``)."""
    enc = make_text_encoder(name)
    if enc is None:
        return None
    parts = [enc(captions[i : i + batch_size]) for i in range(0, len(captions), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, TEXT_DIM)
