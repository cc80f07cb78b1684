"""MMTM: squeeze-and-excitation across the temporal EHR feature map and the CXR feature."""

from __future__ import annotations

import torch
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder


class MMTM(nn.Module):
    """One multimodal transfer module between an EHR map (B, T, C_e) and a CXR feature (B, C_c).

    Squeeze: the EHR map is averaged over time (the CXR embedding has no spatial extent left, so
    its squeeze is the vector itself). A joint layer of width (C_e + C_c) / ratio produces two
    excitation vectors; each stream is rescaled channel-wise by ``2 * sigmoid(excitation)``.
    Stays without an image skip the transfer in both directions (gates of 1).
    """

    def __init__(self, ehr_channels: int, cxr_channels: int, ratio: int = 4):
        super().__init__()
        joint = max(4, (ehr_channels + cxr_channels) // ratio)
        self.squeeze = nn.Linear(ehr_channels + cxr_channels, joint)
        self.excite_ehr = nn.Linear(joint, ehr_channels)
        self.excite_cxr = nn.Linear(joint, cxr_channels)

    def forward(
        self, ehr_map: torch.Tensor, cxr: torch.Tensor, has: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z = torch.relu(self.squeeze(torch.cat([ehr_map.mean(dim=1), cxr], dim=1)))
        h = has[:, None]
        gate_ehr = h * (2 * torch.sigmoid(self.excite_ehr(z))) + (1 - h)
        gate_cxr = h * (2 * torch.sigmoid(self.excite_cxr(z))) + (1 - h)
        info = {"gate_ehr": gate_ehr, "gate_cxr": gate_cxr}
        return ehr_map * gate_ehr[:, None, :], cxr * gate_cxr, info


class TemporalConv(nn.Module):
    """A residual 1-D convolution over hours: (B, T, C) -> (B, T, C)."""

    def __init__(self, channels: int, kernel: int = 3, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(x + self.dropout(torch.relu(y)))


class MMTMFusion(nn.Module):
    def __init__(
        self,
        spec,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        cxr_hidden: int = 32,
        stages: int = 2,
        ratio: int = 4,
        dropout: float = 0.2,
    ):
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages must be >= 1, got {stages}")
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        # Stage 0 of each stream is the encoder/projection; later stages refine both streams.
        self.ehr_stages = nn.ModuleList(
            [nn.Identity()] + [TemporalConv(d_model, dropout=dropout) for _ in range(stages - 1)]
        )
        cxr_layers = [nn.Sequential(nn.Linear(spec.cxr_dim, cxr_hidden), nn.ReLU())]
        cxr_layers += [
            nn.Sequential(nn.Linear(cxr_hidden, cxr_hidden), nn.ReLU()) for _ in range(stages - 1)
        ]
        self.cxr_stages = nn.ModuleList(cxr_layers)
        self.mmtm = nn.ModuleList([MMTM(d_model, cxr_hidden, ratio) for _ in range(stages)])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model + cxr_hidden + 1, spec.n_outputs)

    def features(self, batch) -> dict[str, torch.Tensor]:
        """Both streams after every MMTM stage (for inspection) and the joint feature."""
        has = (batch.has_cxr > 0).float()
        ehr_map = self.ehr.sequence(batch)  # (B, T, C): the temporal EHR feature map
        cxr = self.cxr(batch)
        info: dict[str, torch.Tensor] = {}
        for i, (ehr_stage, cxr_stage, mmtm) in enumerate(
            zip(self.ehr_stages, self.cxr_stages, self.mmtm, strict=True)
        ):
            before = ehr_stage(ehr_map)
            cxr = cxr_stage(cxr) * has[:, None]
            ehr_map, cxr, gates = mmtm(before, cxr, has)
            info[f"ehr_before_{i}"], info[f"ehr_after_{i}"] = before, ehr_map
            info[f"cxr_after_{i}"] = cxr
            info[f"gate_ehr_{i}"], info[f"gate_cxr_{i}"] = gates["gate_ehr"], gates["gate_cxr"]
        info["joint"] = torch.cat([ehr_map.mean(dim=1), cxr * has[:, None], has[:, None]], dim=1)
        return info

    def forward(self, batch):
        return self.head(self.dropout(self.features(batch)["joint"]))
