"""EHR-only transformer encoder, mean-pooled over the 48 hours."""

from __future__ import annotations

from torch import nn

from harness.models.blocks import EHRTransformerEncoder


class EHRTransformer(nn.Module):
    def __init__(
        self, spec, d_model: int = 32, heads: int = 4, layers: int = 1, dropout: float = 0.2
    ):
        super().__init__()
        self.encoder = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.head = nn.Linear(self.encoder.out_dim, spec.n_outputs)

    def forward(self, batch):
        return self.head(self.encoder(batch))
