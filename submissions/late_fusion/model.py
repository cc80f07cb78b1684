"""Late fusion: concatenate the EHR and CXR features, then one linear layer."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder


class LateFusion(nn.Module):
    def __init__(
        self,
        spec,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        cxr_hidden: int = 32,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.cxr_proj = nn.Sequential(
            nn.Linear(spec.cxr_dim, cxr_hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        self.head = nn.Linear(self.ehr.out_dim + cxr_hidden + 1, spec.n_outputs)

    def forward(self, batch):
        has = batch.has_cxr[:, None]
        cxr = self.cxr_proj(self.cxr(batch)) * has
        return self.head(torch.cat([self.ehr(batch), cxr, has], dim=1))
