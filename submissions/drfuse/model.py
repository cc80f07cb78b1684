"""DrFuse: shared/distinct disentanglement with disease-wise attention, missing-CXR aware."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder, mlp


class DrFuse(nn.Module):
    def __init__(
        self,
        spec,
        hidden: int = 32,
        heads: int = 4,
        dropout: float = 0.2,
        lambda_pred: float = 0.5,
        lambda_disentangle: float = 0.1,
        lambda_align: float = 0.1,
    ):
        super().__init__()
        self.lambdas = (lambda_pred, lambda_disentangle, lambda_align)
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, hidden, heads=heads, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.ehr_shared = mlp(hidden, hidden, hidden)
        self.ehr_distinct = mlp(hidden, hidden, hidden)
        self.cxr_shared = mlp(spec.cxr_dim, hidden, hidden)
        self.cxr_distinct = mlp(spec.cxr_dim, hidden, hidden)
        n = spec.n_outputs
        # One query per output (disease) attends over the three representations.
        self.queries = nn.Parameter(torch.randn(n, hidden) / math.sqrt(hidden))
        self.key = nn.Linear(hidden, hidden)
        self.out_weight = nn.Parameter(torch.randn(n, hidden) / math.sqrt(hidden))
        self.out_bias = nn.Parameter(torch.zeros(n))
        self.head_ehr = nn.Linear(2 * hidden, n)
        self.head_cxr = nn.Linear(2 * hidden, n)
        self.head_shared = nn.Linear(hidden, n)
        self.dropout = nn.Dropout(dropout)
        self.binary = spec.task_kind == "binary"

    def _out(self, logits):
        return logits[:, 0] if self.binary else logits

    def parts(self, batch):
        has = (batch.has_cxr > 0)[:, None]
        h_ehr = self.ehr(batch)
        c = self.cxr(batch)
        s_ehr, d_ehr = self.ehr_shared(h_ehr), self.ehr_distinct(h_ehr)
        s_cxr, d_cxr = self.cxr_shared(c), self.cxr_distinct(c)
        shared = torch.where(has, (s_ehr + s_cxr) / 2, s_ehr)
        values = torch.stack([d_ehr, shared, d_cxr], dim=1)  # (B, 3, h)
        keys = self.key(values)
        scores = torch.einsum("nh,bmh->bnm", self.queries, keys) / math.sqrt(keys.shape[-1])
        # The CXR-distinct key is masked out for stays without an image.
        mask = torch.ones_like(scores, dtype=torch.bool)
        mask[:, :, 2] = has
        attn = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        fused = torch.einsum("bnm,bmh->bnh", attn, self.dropout(values))
        logits = (fused * self.out_weight).sum(-1) + self.out_bias
        return {
            "logits": self._out(logits),
            "ehr": self._out(self.head_ehr(torch.cat([s_ehr, d_ehr], dim=1))),
            "cxr": self._out(self.head_cxr(torch.cat([s_cxr, d_cxr], dim=1))),
            "shared": self._out(self.head_shared(shared)),
            "parts": (s_ehr, d_ehr, s_cxr, d_cxr),
            "has": has[:, 0],
        }

    def forward(self, batch):
        return self.parts(batch)["logits"]

    def training_step(self, batch, y, loss_fn, ctx):
        """Task loss + auxiliary unimodal/shared predictions + disentanglement + alignment."""
        lam_pred, lam_dis, lam_align = self.lambdas
        out = self.parts(batch)
        s_ehr, d_ehr, s_cxr, d_cxr = out["parts"]
        has = out["has"]
        loss = loss_fn(out["logits"], y)
        aux = loss_fn(out["ehr"], y) + loss_fn(out["shared"], y)
        if bool(has.any()):  # the CXR prediction loss only where there is an image
            aux = aux + loss_fn(out["cxr"][has], y[has])
            align = (1 - F.cosine_similarity(s_ehr[has], s_cxr[has], dim=1)).mean()
        else:
            align = torch.zeros((), device=loss.device)
        dis = F.cosine_similarity(s_ehr, d_ehr, dim=1).abs().mean()
        dis = dis + (F.cosine_similarity(s_cxr, d_cxr, dim=1).abs() * has).mean()
        return loss + lam_pred * aux + lam_dis * dis + lam_align * align
