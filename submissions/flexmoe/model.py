"""Flex-MoE: a missing-modality bank indexed by modality combination, sparse mixture of experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder


class SparseMoE(nn.Module):
    """Top-k routed experts in plain torch: each token runs through its k chosen experts only."""

    def __init__(self, dim: int, experts: int, top_k: int, dropout: float):
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k must be in [1, experts={experts}], got {top_k}")
        self.top_k = top_k
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
            )
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns the mixed output (same shape as x), the router logits and the top-k indices."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits = self.router(flat)
        top_val, top_idx = logits.topk(self.top_k, dim=-1)
        gates = torch.softmax(top_val, dim=-1)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            contrib = gates[rows, slot, None] * expert(flat[rows])
            out = out.index_add(0, rows, contrib)
        return out.view(shape), logits.view(*shape[:-1], -1), top_idx.view(*shape[:-1], -1)


def combination_index(has_ehr: torch.Tensor, has_cxr: torch.Tensor) -> torch.Tensor:
    """0 = neither modality, 1 = EHR only, 2 = CXR only, 3 = both."""
    return has_ehr.long() + 2 * has_cxr.long()


class FlexMoE(nn.Module):
    def __init__(
        self,
        spec,
        dim: int = 32,
        patches: int = 4,
        heads: int = 4,
        layers: int = 1,
        experts: int = 4,
        top_k: int = 2,
        gate_weight: float = 0.01,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.patches, self.dim = patches, dim
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, dim, heads=heads, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.ehr_patches = nn.Linear(dim, patches * dim)
        self.cxr_patches = nn.Linear(spec.cxr_dim, patches * dim)
        self.patch_norm = nn.LayerNorm(dim)
        # The missing-modality bank: one learned patch set per (modality combination, modality).
        self.bank = nn.Parameter(torch.randn(4, 2, patches, dim) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, 1, dim) * 0.02)
        self.attn = nn.ModuleList(
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
            for _ in range(layers)
        )
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.moe = nn.ModuleList(SparseMoE(dim, experts, top_k, dropout) for _ in range(layers))
        self.n_experts = experts
        self.gate_weight = gate_weight
        self.gate_scale = 1.0
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, spec.n_outputs)

    @staticmethod
    def availability(batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(has_ehr, has_cxr): a stay has EHR when at least one value was observed."""
        has_ehr = batch.ehr_mask.flatten(1).sum(dim=1) > 0
        return has_ehr, batch.has_cxr > 0

    def tokens(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        b, p = len(batch), self.patches
        has_ehr, has_cxr = self.availability(batch)
        combo = combination_index(has_ehr, has_cxr)
        ehr = self.patch_norm(self.ehr_patches(self.ehr(batch)).view(b, p, self.dim))
        cxr = self.patch_norm(self.cxr_patches(self.cxr(batch)).view(b, p, self.dim))
        ehr = torch.where(has_ehr[:, None, None], ehr, self.bank[combo, 0])
        cxr = torch.where(has_cxr[:, None, None], cxr, self.bank[combo, 1])
        return torch.cat([ehr + self.modality[0], cxr + self.modality[1]], dim=1), combo

    def forward(self, batch):
        x, combo = self.tokens(batch)
        balance = x.new_zeros(())
        special = x.new_zeros(())
        for attn, n1, n2, moe in zip(self.attn, self.norm1, self.norm2, self.moe, strict=True):
            q = n1(x)
            x = x + attn(q, q, q, need_weights=False)[0]
            mixed, router_logits, top_idx = moe(n2(x))
            x = x + mixed
            probs = torch.softmax(router_logits, dim=-1).flatten(0, 1)
            # Load balancing (Switch Transformer style): share of routed slots x mean router prob.
            share = F.one_hot(top_idx.flatten(0, 1), self.n_experts).float().sum(1).mean(0)
            balance = balance + self.n_experts * (share / moe.top_k * probs.mean(0)).sum()
            # Specialisation: each stay's router is pulled toward the expert of its combination.
            target = combo % self.n_experts
            special = special + F.cross_entropy(router_logits.mean(dim=1), target)
        logits = self.head(self.norm(x.mean(dim=1)))
        w = self.gate_weight * self.gate_scale
        return {"logits": logits, "loss_balance": w * balance, "loss_specialise": w * special}

    def on_epoch_end(self, ctx) -> None:
        """The gate-loss weight decays linearly to half of its value over training."""
        total = max(1, ctx.max_epochs - 1)
        self.gate_scale = 1.0 - 0.5 * min(1.0, (ctx.epoch + 1) / total)
