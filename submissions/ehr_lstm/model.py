"""EHR-only LSTM over the 48 hourly steps (values + observed mask)."""

from __future__ import annotations

from torch import nn

from harness.models.blocks import EHRLSTMEncoder


class EHRLSTM(nn.Module):
    def __init__(
        self,
        spec,
        hidden: int = 32,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.encoder = EHRLSTMEncoder(
            spec.ehr_dim, hidden, layers=layers, bidirectional=bidirectional, dropout=dropout
        )
        self.head = nn.Linear(self.encoder.out_dim, spec.n_outputs)

    def forward(self, batch):
        return self.head(self.encoder(batch))
