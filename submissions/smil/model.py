"""SMIL: a missing CXR is reconstructed from k-means CXR prototypes weighted by the EHR, trained
with a meta-learning inner loop on simulated-missing batches and a Bayesian feature regulariser."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from harness.models.blocks import CXRInput, EHRTransformerEncoder, mlp


class SMIL(nn.Module):
    def __init__(
        self,
        spec,
        dim: int = 32,
        heads: int = 4,
        prototypes: int = 10,
        temperature: float = 2.0,
        inner_lr: float = 0.01,
        inner_steps: int = 1,
        meta_train_share: float = 0.8,
        mc_samples: int = 3,
        lambda_recon: float = 0.1,
        dropout: float = 0.2,
    ):
        super().__init__()
        self.temperature = temperature
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.meta_train_share = meta_train_share
        self.mc_samples = mc_samples
        self.lambda_recon = lambda_recon
        self.seed = int(spec.seed)
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, dim, heads=heads, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        # Reconstruction network: EHR feature -> weights over the CXR prototypes.
        self.recon = mlp(dim, dim, prototypes)
        self.cxr_proj = mlp(spec.cxr_dim, dim, dim, dropout=dropout)
        # Feature regulariser: a learned mean shift and noise scale of the fused feature.
        self.reg_mu = nn.Linear(2 * dim, 2 * dim)
        self.reg_logvar = nn.Linear(2 * dim, 2 * dim)
        self.head = mlp(2 * dim, dim, spec.n_outputs, dropout=dropout)
        self.register_buffer("prototypes", torch.zeros(prototypes, spec.cxr_dim))

    def fit_setup(self, train) -> None:
        """CXR prototypes: faiss k-means on the training stays' CXR embeddings."""
        import faiss

        if self.cxr.backbone is not None:
            raise ValueError(
                "smil runs on cached CXR embeddings only: its k-means prototype bank is built "
                "from them, and in the end-to-end track they are not in the backbone's space"
            )
        emb = np.ascontiguousarray(train.cxr[train.has_cxr > 0].numpy(), dtype=np.float32)
        k = self.prototypes.shape[0]
        if len(emb) < k:  # too few images to cluster: use the images themselves as prototypes
            centres = np.zeros((k, emb.shape[1]), dtype=np.float32)
            centres[: len(emb)] = emb
        else:
            # Several restarts, keeping the lowest-objective run, avoid a poor local optimum.
            km = faiss.Kmeans(emb.shape[1], k, niter=25, nredo=5, seed=self.seed + 1, verbose=False)
            km.train(emb)
            centres = km.centroids
        self.prototypes.copy_(torch.from_numpy(np.asarray(centres, dtype=np.float32)))

    def reconstruct(self, h_ehr: torch.Tensor) -> torch.Tensor:
        """A CXR embedding from the prototypes, weighted by the EHR feature: (B, cxr_dim)."""
        weight = torch.softmax(self.recon(h_ehr) / self.temperature, dim=-1)
        return weight @ self.prototypes

    def forward(self, batch):
        h = self.ehr(batch)
        has = (batch.has_cxr > 0)[:, None]
        recon = self.reconstruct(h)
        # Reconstruction at training and at inference: every missing image is filled in.
        cxr = torch.where(has, self.cxr(batch), recon)
        fused = torch.cat([h, self.cxr_proj(cxr)], dim=1)
        mu = self.reg_mu(fused)
        if not self.training:
            return self.head(fused + mu)
        std = (0.5 * self.reg_logvar(fused)).exp()
        samples = [
            self.head(fused + mu + std * torch.randn_like(std)) for _ in range(self.mc_samples)
        ]
        logits = torch.stack(samples).mean(dim=0)
        present = has[:, 0]
        if bool(present.any()):
            err = ((recon[present] - batch.cxr[present]) ** 2).mean()
        else:
            err = logits.new_zeros(())
        return {"logits": logits, "loss_recon": self.lambda_recon * err}

    def _loss(self, out, y, loss_fn) -> torch.Tensor:
        logits = out["logits"]
        if logits.dim() == 2 and logits.shape[1] == 1 and y.dim() == 1:
            logits = logits[:, 0]
        return loss_fn(logits, y) + out["loss_recon"]

    def training_step(self, batch, y, loss_fn, ctx):
        """Meta-learning: adapt the non-EHR parameters on a simulated-missing meta-train part,
        then score the adapted model on the meta-validation part (the loss the harness steps)."""
        n = len(batch)
        n_tr = int(round(self.meta_train_share * n))
        if n_tr < 2 or n - n_tr < 2:
            return self._loss(self(batch), y, loss_fn)
        tr = torch.arange(n_tr, device=y.device)
        va = torch.arange(n_tr, n, device=y.device)
        meta_tr = _rows(batch, tr)
        missing = meta_tr.replace(
            has_cxr=torch.zeros_like(meta_tr.has_cxr),
            cxr=torch.zeros_like(meta_tr.cxr),
            cxr_time_hours=torch.zeros_like(meta_tr.cxr_time_hours),
        )
        names = [
            k for k, p in self.named_parameters() if p.requires_grad and not k.startswith("ehr.")
        ]
        fast = {k: p for k, p in self.named_parameters() if k in names}
        for _ in range(self.inner_steps):
            inner = self._loss(functional_call(self, fast, (missing,)), y[tr], loss_fn)
            grads = torch.autograd.grad(
                inner, list(fast.values()), create_graph=True, allow_unused=True
            )
            fast = {
                k: p if g is None else p - self.inner_lr * g
                for (k, p), g in zip(fast.items(), grads, strict=True)
            }
        return self._loss(functional_call(self, fast, (_rows(batch, va),)), y[va], loss_fn)


def _rows(batch, idx: torch.Tensor):
    """The rows ``idx`` of a batch."""
    changes = {f.name: getattr(batch, f.name) for f in fields(batch)}
    return batch.replace(**{k: None if v is None else v[idx] for k, v in changes.items()})
