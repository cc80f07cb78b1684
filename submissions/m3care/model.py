"""M3Care: impute a missing CXR representation from similar training patients (faiss index)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder, mlp


class M3Care(nn.Module):
    def __init__(
        self,
        spec,
        dim: int = 32,
        heads: int = 4,
        neighbours: int = 8,
        lambda_impute: float = 0.1,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.k = neighbours
        self.lambda_impute = lambda_impute
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, dim, heads=heads, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.cxr_proj = mlp(spec.cxr_dim, dim, dim, dropout=dropout)
        # Learned patient-similarity kernel over the EHR summaries of the retrieved candidates.
        self.sim_proj = nn.Linear(spec.ehr_summary_dim, dim)
        self.log_bandwidth = nn.Parameter(torch.zeros(()))
        self.gate = nn.Linear(2 * dim, dim)
        self.head = mlp(2 * dim, dim, spec.n_outputs, dropout=dropout)
        # The training bank (stays with an image): EHR summary keys, CXR embeddings, stay ids.
        # Buffers, so the bank travels with the checkpoint and the device.
        self.register_buffer("bank_key", torch.zeros(0, spec.ehr_summary_dim))
        self.register_buffer("bank_cxr", torch.zeros(0, spec.cxr_dim))
        self.register_buffer("bank_id", torch.zeros(0, dtype=torch.long))
        self._index: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_index"] = None  # faiss objects are rebuilt from the buffers, not pickled
        return state

    def fit_setup(self, train) -> None:
        """Index the training stays that have an image (exact L2 search on EHR summaries)."""
        if self.cxr.backbone is not None:
            raise ValueError(
                "m3care runs on cached CXR embeddings only: its neighbour bank is built "
                "from them, and in the end-to-end track they are not in the backbone's space"
            )
        has = train.has_cxr > 0
        dev = self.bank_key.device
        self.bank_key = train.ehr_summary[has].float().contiguous().to(dev)
        self.bank_cxr = train.cxr[has].float().to(dev)
        self.bank_id = train.stay_id[has].long().to(dev)
        self._index = None

    def index(self) -> Any:
        import faiss

        if self._index is None or self._index.ntotal != len(self.bank_key):
            keys = np.ascontiguousarray(self.bank_key.detach().cpu().numpy(), dtype=np.float32)
            self._index = faiss.IndexFlatL2(keys.shape[1])
            self._index.add(keys)
        return self._index

    def neighbours(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank rows (B, k) of each stay's nearest training stays, and which of them are valid.

        Depends only on the stay itself and the training bank, never on the rest of the batch; a
        training stay never retrieves its own image.
        """
        b, dev = len(batch), batch.ehr_summary.device
        n_bank = len(self.bank_key)
        if n_bank == 0:
            empty = torch.zeros(b, self.k, dtype=torch.long, device=dev)
            return empty, torch.zeros(b, self.k, dtype=torch.bool, device=dev)
        query = np.ascontiguousarray(batch.ehr_summary.detach().cpu().numpy(), dtype=np.float32)
        _, found = self.index().search(query, min(self.k + 1, n_bank))
        found_t = torch.from_numpy(found).to(dev)
        ok = found_t >= 0
        safe = found_t.clamp(min=0)
        ok &= self.bank_id[safe] != batch.stay_id[:, None].long()
        # Keep the first k valid hits, in distance order.
        rank = ok.long().cumsum(dim=1)
        ok &= rank <= self.k
        order = torch.where(ok, torch.arange(ok.shape[1], device=dev), ok.shape[1]).argsort(1)
        rows = safe.gather(1, order)[:, : self.k]
        valid = ok.gather(1, order)[:, : self.k]
        if rows.shape[1] < self.k:
            pad = self.k - rows.shape[1]
            rows = torch.cat([rows, rows.new_zeros(b, pad)], dim=1)
            valid = torch.cat([valid, valid.new_zeros(b, pad)], dim=1)
        return rows, valid

    def impute(self, batch) -> torch.Tensor:
        """The similarity-weighted CXR representation of each stay's neighbours: (B, dim)."""
        q = self.sim_proj(batch.ehr_summary)
        if len(self.bank_key) == 0:  # before fit_setup: nothing to impute from
            return q.new_zeros(q.shape[0], self.gate.out_features)
        rows, valid = self.neighbours(batch)
        cand = self.sim_proj(self.bank_key[rows])
        dist = ((cand - q[:, None, :]) ** 2).sum(-1) / self.log_bandwidth.exp()
        weight = torch.softmax(dist.neg().masked_fill(~valid, float("-inf")), dim=1)
        weight = torch.nan_to_num(weight) * valid  # no valid neighbour -> zero representation
        values = self.cxr_proj(self.bank_cxr[rows])
        return (weight[..., None] * values).sum(dim=1)

    def forward(self, batch):
        has = (batch.has_cxr > 0)[:, None]
        own = self.cxr_proj(self.cxr(batch))
        imputed = self.impute(batch)
        g = torch.sigmoid(self.gate(torch.cat([own, imputed], dim=1)))
        cxr = torch.where(has, g * own + (1 - g) * imputed, imputed)
        logits = self.head(torch.cat([self.ehr(batch), cxr], dim=1))
        present = has[:, 0]
        if bool(present.any()):
            err = ((imputed[present] - own[present].detach()) ** 2).mean()
        else:
            err = logits.new_zeros(())
        return {"logits": logits, "loss_impute": self.lambda_impute * err}
