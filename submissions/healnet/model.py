"""HEALNet: a latent array that alternately cross-attends to EHR hours and CXR tokens."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.models.blocks import CXRInput, ehr_input


def fourier_features(pos: torch.Tensor, bands: int, max_freq: float) -> torch.Tensor:
    """Perceiver-style encoding of positions in [-1, 1]: (..., 2 * bands + 1)."""
    freqs = torch.linspace(1.0, max_freq / 2, bands, device=pos.device, dtype=pos.dtype)
    scaled = pos[..., None] * freqs * math.pi
    return torch.cat([scaled.sin(), scaled.cos(), pos[..., None]], dim=-1)


class SNNFeedForward(nn.Module):
    """Self-normalising feed-forward block (SELU + alpha dropout), as HEALNet uses."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.SELU(), nn.AlphaDropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusionLayer(nn.Module):
    """One HEALNet step: cross-attend to EHR, then (where present) to CXR, then self-attend."""

    def __init__(self, dim: int, ehr_in: int, heads: int, dropout: float):
        super().__init__()
        self.norm_lat = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])
        self.norm_ehr = nn.LayerNorm(ehr_in)
        self.norm_cxr = nn.LayerNorm(dim)
        self.cross_ehr = nn.MultiheadAttention(
            dim, heads, dropout=dropout, kdim=ehr_in, vdim=ehr_in, batch_first=True
        )
        self.cross_cxr = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ff_ehr = SNNFeedForward(dim, dropout)
        self.ff_cxr = SNNFeedForward(dim, dropout)
        self.ff_self = SNNFeedForward(dim, dropout)

    def forward(
        self,
        lat: torch.Tensor,
        ehr_tokens: torch.Tensor,
        cxr_tokens: torch.Tensor,
        has: torch.Tensor,
    ) -> torch.Tensor:
        kv = self.norm_ehr(ehr_tokens)
        q = self.norm_lat[0](lat)
        lat = lat + self.cross_ehr(q, kv, kv, need_weights=False)[0]
        lat = lat + self.ff_ehr(lat)
        # Per-sample missing modality: the CXR update is multiplied by has_cxr, so a stay without
        # an image skips this attention entirely (its latents are exactly those of the EHR pass).
        gate = has[:, None, None]
        kv = self.norm_cxr(cxr_tokens)
        q = self.norm_lat[1](lat)
        lat = lat + gate * self.cross_cxr(q, kv, kv, need_weights=False)[0]
        lat = lat + gate * self.ff_cxr(lat)
        q = self.norm_lat[2](lat)
        lat = lat + self.self_attn(q, q, q, need_weights=False)[0]
        return lat + self.ff_self(lat)


class HEALNet(nn.Module):
    def __init__(
        self,
        spec,
        latents: int = 16,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        cxr_tokens: int = 4,
        freq_bands: int = 4,
        max_freq: float = 10.0,
        weight_tying: bool = True,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.freq_bands, self.max_freq = freq_bands, max_freq
        ehr_in = 2 * spec.ehr_dim + 2 * freq_bands + 1
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.02)
        self.cxr = CXRInput(spec)
        self.cxr_tokens = cxr_tokens
        self.cxr_proj = nn.Linear(spec.cxr_dim, cxr_tokens * dim)
        self.cxr_pos = nn.Parameter(torch.randn(cxr_tokens, dim) * 0.02)
        first = FusionLayer(dim, ehr_in, heads, dropout)
        if depth > 1 and weight_tying:
            # As in Perceiver/HEALNet: the first layer is its own, the later ones share weights.
            shared = FusionLayer(dim, ehr_in, heads, dropout)
            layers = [first] + [shared] * (depth - 1)
        else:
            layers = [first] + [FusionLayer(dim, ehr_in, heads, dropout) for _ in range(depth - 1)]
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, spec.n_outputs)

    def ehr_tokens(self, batch) -> torch.Tensor:
        x = ehr_input(batch)
        steps = x.shape[1]
        pos = torch.linspace(-1.0, 1.0, steps, device=x.device, dtype=x.dtype)
        enc = fourier_features(pos, self.freq_bands, self.max_freq)
        return torch.cat([x, enc.expand(x.shape[0], -1, -1)], dim=-1)

    def encode(self, batch) -> torch.Tensor:
        """The final latent array (B, latents, dim)."""
        b = len(batch)
        ehr = self.ehr_tokens(batch)
        cxr = self.cxr_proj(self.cxr(batch)).view(b, self.cxr_tokens, -1) + self.cxr_pos
        has = (batch.has_cxr > 0).to(ehr.dtype)
        lat = self.latents.expand(b, -1, -1)
        for layer in self.layers:
            lat = layer(lat, ehr, cxr, has)
        return lat

    def forward(self, batch):
        return self.head(self.norm(self.encode(batch).mean(dim=1)))
