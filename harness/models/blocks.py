"""Reusable building blocks for submissions: EHR sequence encoders, the CXR input, small MLPs."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.protocol import Batch, ModelSpec


def mlp(in_dim: int, hidden: int, out_dim: int, *, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


def ehr_input(batch: Batch, use_mask: bool = True) -> torch.Tensor:
    """The per-step EHR input: normalised values, followed by the observed mask if requested."""
    return torch.cat([batch.ehr, batch.ehr_mask], dim=-1) if use_mask else batch.ehr


class EHRLSTMEncoder(nn.Module):
    """Project each hour, run an LSTM, return the last hidden state(s): (B, out_dim)."""

    def __init__(
        self,
        ehr_dim: int,
        hidden: int = 64,
        *,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.2,
        use_mask: bool = True,
    ):
        super().__init__()
        self.use_mask = use_mask
        self.proj = nn.Linear(ehr_dim * (2 if use_mask else 1), hidden)
        self.lstm = nn.LSTM(
            hidden,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def sequence(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step outputs (B, T, out_dim) and the final state (B, out_dim)."""
        x = self.proj(ehr_input(batch, self.use_mask))
        out, (h, _) = self.lstm(x)
        last = torch.cat([h[-2], h[-1]], dim=-1) if self.lstm.bidirectional else h[-1]
        return out, self.dropout(last)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.sequence(batch)[1]


class EHRTransformerEncoder(nn.Module):
    """Linear embedding + learned positions + TransformerEncoder, mean-pooled: (B, d_model)."""

    def __init__(
        self,
        ehr_dim: int,
        d_model: int = 64,
        *,
        heads: int = 4,
        layers: int = 1,
        dropout: float = 0.2,
        seq_len: int = 48,
        use_mask: bool = True,
    ):
        super().__init__()
        self.use_mask = use_mask
        self.embed = nn.Linear(ehr_dim * (2 if use_mask else 1), d_model)
        self.pos = nn.Parameter(torch.empty(1, seq_len, d_model).uniform_(-0.1, 0.1))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = d_model

    def sequence(self, batch: Batch) -> torch.Tensor:
        x = self.embed(ehr_input(batch, self.use_mask))
        return self.encoder(x + self.pos[:, : x.shape[1]])

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.dropout(self.sequence(batch).mean(dim=1))


class CXRInput(nn.Module):
    """The CXR feature of each stay, (B, spec.cxr_dim), zeros where the image is missing.

    Feature track: the cached embedding from the batch. End-to-end track (``spec.cxr_backbone``
    set): the trainable backbone applied to the pixels of the stays that have an image. Models
    that use this block run unchanged in both tracks.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.backbone = spec.cxr_backbone
        self.out_dim = spec.cxr_dim

    def forward(self, batch: Batch) -> torch.Tensor:
        if self.backbone is None:
            return batch.cxr
        if batch.cxr_pixels is None:
            raise ValueError("end-to-end track: the batch carries no cxr_pixels")
        present = batch.has_cxr > 0
        out = batch.cxr_pixels.new_zeros((len(batch), self.out_dim))
        if bool(present.any()):
            out = out.index_put((present,), self.backbone(batch.cxr_pixels[present]).to(out.dtype))
        return out
