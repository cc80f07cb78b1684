"""DAFT: the CXR conditions the temporal EHR feature map through a learned scale and shift."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder


class DAFTBlock(nn.Module):
    """A residual temporal block whose inner feature map is scaled and shifted per channel.

    The scale and shift come from a bottleneck MLP over the squeezed (time-averaged) EHR feature
    map concatenated with the CXR feature, so every hour of the (B, T, C) map is modulated by an
    image-dependent affine transform while the time dimension is kept.
    """

    def __init__(self, channels: int, cond_dim: int, bottleneck: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.norm1 = nn.LayerNorm(channels, elementwise_affine=False)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.norm2 = nn.LayerNorm(channels)
        self.film = nn.Sequential(
            nn.Linear(channels + cond_dim, bottleneck),
            nn.ReLU(),
            nn.Linear(bottleneck, 2 * channels),
        )

    def _conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.transpose(1, 2)).transpose(1, 2)

    def modulate(
        self, z: torch.Tensor, cond: torch.Tensor, has: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Apply ``alpha * z + beta`` per channel to the (B, T, C) map ``z``.

        Stays without an image get the identity (alpha 1, beta 0): the EHR path is unchanged.
        """
        d_alpha, beta = self.film(torch.cat([z.mean(dim=1), cond], dim=1)).chunk(2, dim=1)
        h = has[:, None]
        alpha = 1.0 + h * d_alpha
        beta = h * beta
        return alpha[:, None, :] * z + beta[:, None, :], alpha, beta

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, has: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z = self.norm1(self._conv(self.conv1, x))
        modulated, alpha, beta = self.modulate(z, cond, has)
        out = self.norm2(self._conv(self.conv2, torch.relu(modulated)))
        info = {"pre": z, "modulated": modulated, "alpha": alpha, "beta": beta}
        return torch.relu(out + x), info


class DAFT(nn.Module):
    def __init__(
        self,
        spec,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        cxr_hidden: int = 32,
        bottleneck: int = 16,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.cxr_proj = nn.Sequential(nn.Linear(spec.cxr_dim, cxr_hidden), nn.ReLU())
        self.block = DAFTBlock(d_model, cxr_hidden, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, spec.n_outputs)

    def features(self, batch) -> dict[str, torch.Tensor]:
        """The temporal EHR map before and after conditioning, and the pooled output feature."""
        has = (batch.has_cxr > 0).float()
        seq = self.ehr.sequence(batch)  # (B, T, C): one feature vector per hour
        cond = self.cxr_proj(self.cxr(batch)) * has[:, None]
        out, info = self.block(seq, cond, has)
        info["sequence"] = out
        info["pooled"] = self.dropout(out.mean(dim=1))
        return info

    def forward(self, batch):
        return self.head(self.features(batch)["pooled"])
