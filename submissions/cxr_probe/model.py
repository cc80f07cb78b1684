"""CXR-only MLP probe on the image feature (cached embedding or a trainable backbone)."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import CXRInput, mlp


class CXRProbe(nn.Module):
    def __init__(self, spec, hidden: int = 64, dropout: float = 0.2):
        super().__init__()
        self.cxr = CXRInput(spec)
        self.head = mlp(spec.cxr_dim + 1, hidden, spec.n_outputs, dropout=dropout)

    def forward(self, batch):
        return self.head(torch.cat([self.cxr(batch), batch.has_cxr[:, None]], dim=1))
