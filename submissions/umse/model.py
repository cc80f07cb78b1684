"""UMSE: observed EHR values as (time, variable, value) triplets, the CXR as a timed token, and
modality-aware attention that exchanges information only through bottleneck tokens."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import CXRInput


class TimeEmbedding(nn.Module):
    """Learned sinusoidal embedding of a time in hours (mTAND style): one linear + d-1 periodic.

    EHR hours and CXR times go through the same module, in the same unit; hours are divided by
    24 only to keep the linear term near the scale of the other embeddings.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, dim - 1)

    def forward(self, hours: torch.Tensor) -> torch.Tensor:
        t = hours[..., None] / 24.0
        return torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)


def observed_triplets(
    batch, max_triplets: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The observed EHR entries as padded triplets, keeping each stay's latest ``max_triplets``.

    Returns ``hour`` (B, N) float, ``variable`` (B, N) long, ``value`` (B, N) and ``valid``
    (B, N) bool, in time order. Imputed entries (``ehr_mask`` = 0) never become triplets.
    """
    b, steps, n_var = batch.ehr.shape
    mask = (batch.ehr_mask > 0).reshape(b, steps * n_var)
    from_end = mask.flip(1).long().cumsum(1).flip(1)
    kept = mask & (from_end <= max_triplets)
    n_kept = kept.sum(1)
    n = max(1, int(n_kept.max()))
    pos = torch.arange(steps * n_var, device=mask.device).expand(b, -1)
    # Kept entries first, in time order; the rest are padding.
    order = torch.where(kept, pos, pos + steps * n_var).argsort(dim=1)[:, :n]
    valid = torch.arange(n, device=mask.device)[None, :] < n_kept[:, None]
    value = batch.ehr.reshape(b, -1).gather(1, order) * valid
    return (order // n_var).float(), order % n_var, value, valid


class UMSE(nn.Module):
    def __init__(
        self,
        spec,
        dim: int = 32,
        heads: int = 4,
        layers: int = 2,
        bottlenecks: int = 2,
        max_triplets: int = 128,
        dropout: float = 0.2,
    ):
        super().__init__()
        if layers < 2:
            raise ValueError(
                f"umse needs layers >= 2 (got {layers}): with one layer the bottleneck tokens are "
                "updated after the CLS tokens are read, so no information crosses modalities"
            )
        self.max_triplets = max_triplets
        self.value = nn.Linear(1, dim)
        self.variable = nn.Embedding(spec.ehr_dim, dim)
        self.time = TimeEmbedding(dim)
        self.modality = nn.Embedding(2, dim)
        self.cxr = CXRInput(spec)
        self.cxr_proj = nn.Linear(spec.cxr_dim, dim)
        self.cls = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.bottleneck = nn.Parameter(torch.randn(bottlenecks, dim) * 0.02)

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(
                dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True
            )

        # Modality-aware attention: each modality has its own layer weights.
        self.ehr_layers = nn.ModuleList(layer() for _ in range(layers))
        self.cxr_layers = nn.ModuleList(layer() for _ in range(layers))
        self.mix = nn.Parameter(torch.zeros(2))
        self.head = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout)
        )
        self.out = nn.Linear(dim, spec.n_outputs)

    def encode(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The final EHR and CXR CLS outputs, each (B, dim)."""
        b = len(batch)
        hour, var, value, valid = observed_triplets(batch, self.max_triplets)
        ehr = self.value(value[..., None]) + self.variable(var) + self.time(hour)
        ehr = ehr + self.modality.weight[0]
        has = batch.has_cxr > 0
        cxr = self.cxr_proj(self.cxr(batch)) + self.time(batch.cxr_time_hours)
        cxr = (cxr + self.modality.weight[1])[:, None, :]
        nb = self.bottleneck.shape[0]
        bott = self.bottleneck.expand(b, -1, -1)
        cls_e = self.cls[0].expand(b, 1, -1)
        cls_c = self.cls[1].expand(b, 1, -1)
        always = torch.zeros(b, 1 + nb, dtype=torch.bool, device=value.device)
        pad_e = torch.cat([always, ~valid], dim=1)
        pad_c = torch.cat([always, ~has[:, None]], dim=1)
        for layer_e, layer_c in zip(self.ehr_layers, self.cxr_layers, strict=True):
            out_e = layer_e(torch.cat([cls_e, bott, ehr], dim=1), src_key_padding_mask=pad_e)
            out_c = layer_c(torch.cat([cls_c, bott, cxr], dim=1), src_key_padding_mask=pad_c)
            cls_e, ehr = out_e[:, :1], out_e[:, 1 + nb :]
            cls_c, cxr = out_c[:, :1], out_c[:, 1 + nb :]
            b_e, b_c = out_e[:, 1 : 1 + nb], out_c[:, 1 : 1 + nb]
            # Bottleneck exchange (MBT): average the two streams' updates; EHR only without a CXR.
            bott = torch.where(has[:, None, None], (b_e + b_c) / 2, b_e)
        return cls_e[:, 0], cls_c[:, 0]

    def forward(self, batch):
        cls_e, cls_c = self.encode(batch)
        w = torch.softmax(self.mix, dim=0)
        has = (batch.has_cxr > 0)[:, None]
        fused = torch.where(has, w[0] * cls_e + w[1] * cls_c, cls_e)
        return self.out(self.head(fused))
