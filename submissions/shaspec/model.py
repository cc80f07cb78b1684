"""ShaSpec: shared and specific encoders; a missing CXR is replaced by the EHR's shared feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder, ehr_input, mlp


class SharedEncoder(nn.Module):
    """One modality-agnostic transformer applied to either modality's tokens (shared weights).

    Each modality only has its own linear tokenizer (the inputs have different sizes) and a
    modality embedding; everything after the tokenizer is the same network.
    """

    def __init__(self, ehr_dim: int, cxr_dim: int, dim: int, heads: int, seq_len: int, drop: float):
        super().__init__()
        self.tok_ehr = nn.Linear(2 * ehr_dim, dim)
        self.tok_cxr = nn.Linear(cxr_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, drop, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def ehr(self, batch) -> torch.Tensor:
        x = self.tok_ehr(ehr_input(batch))
        x = x + self.pos[:, : x.shape[1]] + self.modality[0]
        return self.encoder(x).mean(dim=1)

    def cxr(self, cxr: torch.Tensor) -> torch.Tensor:
        x = (self.tok_cxr(cxr) + self.modality[1])[:, None, :]
        return self.encoder(x).mean(dim=1)


class ShaSpec(nn.Module):
    def __init__(
        self,
        spec,
        dim: int = 32,
        heads: int = 4,
        dropout: float = 0.2,
        alpha: float = 0.05,
        beta: float = 0.05,
    ):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.cxr = CXRInput(spec)
        self.shared = SharedEncoder(spec.ehr_dim, spec.cxr_dim, dim, heads, spec.seq_len, dropout)
        self.spec_ehr = EHRTransformerEncoder(
            spec.ehr_dim, dim, heads=heads, dropout=dropout, seq_len=spec.seq_len
        )
        self.spec_cxr = mlp(spec.cxr_dim, dim, dim, dropout=dropout)
        # Compositional layer: residual fusion of [shared, specific] per modality.
        self.compose = nn.Linear(2 * dim, dim)
        self.domain = nn.Linear(dim, 2)
        self.head = mlp(dim, dim, spec.n_outputs, dropout=dropout)

    def features(self, batch) -> dict[str, torch.Tensor]:
        """Shared, specific and fused per-modality features, each (B, dim)."""
        c = self.cxr(batch)
        has = (batch.has_cxr > 0)[:, None]
        s_ehr, s_cxr = self.shared.ehr(batch), self.shared.cxr(c)
        p_ehr, p_cxr = self.spec_ehr(batch), self.spec_cxr(c)
        f_ehr = p_ehr + self.compose(torch.cat([s_ehr, p_ehr], dim=1))
        f_cxr = p_cxr + self.compose(torch.cat([s_cxr, p_cxr], dim=1))
        # Missing CXR: its feature is generated from the shared feature of the available EHR.
        f_cxr = torch.where(has, f_cxr, s_ehr)
        return {
            "s_ehr": s_ehr,
            "s_cxr": s_cxr,
            "p_ehr": p_ehr,
            "p_cxr": p_cxr,
            "f_ehr": f_ehr,
            "f_cxr": f_cxr,
        }

    def forward(self, batch):
        f = self.features(batch)
        has = batch.has_cxr > 0
        logits = self.head((f["f_ehr"] + f["f_cxr"]) / 2)
        zero = logits.new_zeros(())
        # Distribution alignment of the shared features, over stays that have both modalities.
        align = (f["s_ehr"][has] - f["s_cxr"][has]).abs().mean() if bool(has.any()) else zero
        # Domain classification of the specific features (which modality produced them).
        specific = torch.cat([f["p_ehr"], f["p_cxr"][has]])
        target = torch.cat(
            [
                torch.zeros(len(batch), dtype=torch.long, device=logits.device),
                torch.ones(int(has.sum()), dtype=torch.long, device=logits.device),
            ]
        )
        domain = F.cross_entropy(self.domain(specific), target)
        return {
            "logits": logits,
            "loss_align": self.alpha * align,
            "loss_domain": self.beta * domain,
        }
