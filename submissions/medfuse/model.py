"""MedFuse: a fusion LSTM over the modality tokens, skipping the CXR token when it is missing."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from harness.models.blocks import CXRInput, EHRLSTMEncoder


class MedFuse(nn.Module):
    def __init__(self, spec, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.ehr = EHRLSTMEncoder(spec.ehr_dim, hidden, bidirectional=False, dropout=dropout)
        self.cxr = CXRInput(spec)
        self.cxr_proj = nn.Linear(spec.cxr_dim, hidden)
        self.fusion = nn.LSTM(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, spec.n_outputs)

    def forward(self, batch):
        ehr_token = self.ehr(batch)
        cxr_token = self.cxr_proj(self.cxr(batch))
        tokens = torch.stack([ehr_token, cxr_token], dim=1)
        # Per-sample length: 2 with an image, 1 without, so the CXR token is never read then.
        lengths = (1 + (batch.has_cxr > 0).long()).cpu()
        packed = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.fusion(packed)
        return self.head(self.dropout(h[-1]))
