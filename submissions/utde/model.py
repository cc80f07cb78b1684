"""UTDE: EHR and CXR aligned on one hourly time grid by multi-time attention, then fused by a
cross-modal transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

from harness.models.blocks import CXRInput, ehr_input


class TimeEmbedding(nn.Module):
    """Learned sinusoidal embedding of a time in hours: ``[sin(w t), cos(w t)]``, learned ``w``.

    The dot product of two embeddings is ``sum_i cos(w_i (t - s))``: it depends on the time
    difference only and peaks when the two times coincide.
    """

    def __init__(self, dim: int, max_period_hours: float = 96.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding size must be even and >= 2, got {dim}")
        freqs = torch.logspace(0.0, math.log10(2 * math.pi / max_period_hours), dim // 2)
        self.log_freq = nn.Parameter(freqs.log())
        self.dim = dim

    def forward(self, hours: torch.Tensor) -> torch.Tensor:
        angle = hours[..., None] * self.log_freq.exp()
        return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class TimeScores(nn.Module):
    """Multi-head attention scores between query times and key times (mTAND style)."""

    def __init__(self, d_time: int, heads: int):
        super().__init__()
        self.heads, self.d_time = heads, d_time
        self.query = nn.Linear(d_time, heads * d_time)
        self.key = nn.Linear(d_time, heads * d_time)

    def forward(self, q_emb: torch.Tensor, k_emb: torch.Tensor) -> torch.Tensor:
        """(..., Tq, d_time) x (..., Tk, d_time) -> (..., heads, Tq, Tk)."""
        q = self.query(q_emb).unflatten(-1, (self.heads, self.d_time)).transpose(-2, -3)
        k = self.key(k_emb).unflatten(-1, (self.heads, self.d_time)).transpose(-2, -3)
        return q @ k.transpose(-1, -2) / math.sqrt(self.d_time)


class CrossModalLayer(nn.Module):
    """One MulT-style block: a stream attends to the other stream, then a feed-forward layer."""

    def __init__(self, d_model: int, heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model),
        )
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, other, other, need_weights=False)[0])
        return self.norm2(x + self.ff(x))


class UTDE(nn.Module):
    """Query grid: the centre of each hourly EHR bin, in hours since ICU admission (the clock of
    ``cxr_time_hours``), so both modalities are placed on the same time axis."""

    def __init__(
        self,
        spec,
        d_model: int = 32,
        d_time: int = 16,
        heads: int = 4,
        time_heads: int = 2,
        dropout: float = 0.2,
    ):
        super().__init__()
        if d_model % time_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by time_heads ({time_heads})")
        f = spec.ehr_dim
        self.time_heads = time_heads
        self.register_buffer("query_hours", torch.arange(spec.seq_len, dtype=torch.float32) + 0.5)
        self.time = TimeEmbedding(d_time)
        # EHR: imputation embedding (forward-filled hourly values + mask) and multi-time attention
        # over the observed values only, mixed by a learned gate (UTDE).
        self.imputed = nn.Linear(2 * f, d_model)
        self.ehr_scores = TimeScores(d_time, time_heads)
        self.mtand = nn.Linear(time_heads * f, d_model)
        self.gate = nn.Linear(2 * d_model, d_model)
        self.position = nn.Linear(d_time, d_model)
        # CXR: one observation at its time; each query hour weighs it against a learned null slot.
        self.cxr = CXRInput(spec)
        self.cxr_value = nn.Linear(spec.cxr_dim, d_model)
        self.cxr_scores = TimeScores(d_time, time_heads)
        self.null_score = nn.Parameter(torch.zeros(time_heads))
        self.null_value = nn.Parameter(torch.zeros(time_heads, d_model // time_heads))
        self.ehr_to_cxr = CrossModalLayer(d_model, heads, dropout)
        self.cxr_to_ehr = CrossModalLayer(d_model, heads, dropout)
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model + 1, 2 * d_model + 1), nn.ReLU(), nn.Dropout(dropout)
        )
        self.head = nn.Linear(2 * d_model + 1, spec.n_outputs)

    # ---------------------------------------------------------------- EHR stream
    def ehr_stream(self, batch) -> torch.Tensor:
        grid = self.time(self.query_hours)  # (T, d_time)
        scores = self.ehr_scores(grid, grid)  # (H, Tq, Tk): observation hours = bin centres
        weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        mask = batch.ehr_mask
        num = torch.einsum("hqk,bkj->bqhj", weights, mask * batch.ehr)
        den = torch.einsum("hqk,bkj->bqhj", weights, mask)
        interp = (num / den.clamp_min(1e-6)).flatten(2)  # 0 for a variable never observed
        e_mtand = self.mtand(interp)
        e_imp = self.imputed(ehr_input(batch))
        g = torch.sigmoid(self.gate(torch.cat([e_imp, e_mtand], dim=-1)))
        return g * e_imp + (1 - g) * e_mtand + self.position(grid)

    # ---------------------------------------------------------------- CXR stream
    def cxr_attention(self, batch) -> torch.Tensor:
        """Weight of the image at each query hour, (B, heads, T); 0 for stays without one."""
        grid = self.time(self.query_hours)
        t_cxr = self.time(batch.cxr_time_hours[:, None])  # (B, 1, d_time)
        scores = self.cxr_scores(grid.expand(len(batch), -1, -1), t_cxr)[..., 0]  # (B, H, T)
        weight = torch.sigmoid(scores - self.null_score[None, :, None])
        return weight * (batch.has_cxr > 0).float()[:, None, None]

    def cxr_stream(self, batch) -> torch.Tensor:
        w = self.cxr_attention(batch)[..., None]  # (B, H, T, 1)
        value = self.cxr_value(self.cxr(batch)).unflatten(-1, (self.time_heads, -1))[:, :, None]
        stream = w * value + (1 - w) * self.null_value[None, :, None, :]  # (B, H, T, d/H)
        return stream.permute(0, 2, 1, 3).flatten(2)  # (B, T, d)

    def forward(self, batch):
        ehr = self.ehr_stream(batch)
        cxr = self.cxr_stream(batch)
        ehr_x = self.ehr_to_cxr(ehr, cxr)
        cxr_x = self.cxr_to_ehr(cxr, ehr)
        has = (batch.has_cxr > 0).float()[:, None]
        z = torch.cat([ehr_x.mean(dim=1), cxr_x.mean(dim=1), has], dim=1)
        return self.head(z + self.mlp(z))
