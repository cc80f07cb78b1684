"""InfoReg: slow down the dominant modality's updates during the prime learning window."""

from __future__ import annotations

import logging

import torch
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder

log = logging.getLogger(__name__)
MODALITIES = ("ehr", "cxr")


def true_label_confidence(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean probability given to the true label (per label for multilabel): higher is better."""
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1).gather(1, y.long()[:, None]).mean()
    p = torch.sigmoid(logits)
    return torch.where(y > 0.5, p, 1 - p).mean()


class InfoReg(nn.Module):
    """Joint head plus one head per modality; the regulation lives in ``training_step``.

    Training state (not part of the checkpoint): ``window_open`` (the prime learning window),
    ``fisher_history`` (one Fisher-trace proxy per epoch) and ``last_regulation``
    (the regulated modality and its factor beta at the last step).
    """

    def __init__(
        self,
        spec,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        cxr_hidden: int = 32,
        dropout: float = 0.2,
        unimodal_weight: float = 1.0,
        window_threshold: float = 0.05,
        history: int = 2,
        strength: float = 1.0,
        max_beta: float = 0.9,
    ):
        super().__init__()
        if not 0.0 <= max_beta < 1.0:
            raise ValueError(f"max_beta must be in [0, 1), got {max_beta}")
        if history < 1:
            raise ValueError(f"history must be >= 1, got {history}")
        self.kind = spec.task_kind
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.cxr_enc = nn.Sequential(
            nn.Linear(spec.cxr_dim, cxr_hidden), nn.ReLU(), nn.Dropout(dropout)
        )
        n = spec.n_outputs
        self.head = nn.Linear(d_model + cxr_hidden + 1, n)
        self.head_ehr = nn.Linear(d_model, n)
        self.head_cxr = nn.Linear(cxr_hidden, n)
        self.unimodal_weight = unimodal_weight
        self.window_threshold = window_threshold
        self.history = history
        self.strength = strength
        self.max_beta = max_beta
        self.window_open = True
        self.fisher_history: list[float] = []
        self._fisher_sum = 0.0
        self._fisher_steps = 0
        self.last_regulation: tuple[str | None, float] = (None, 0.0)

    # ---------------------------------------------------------------- model
    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] if self.kind == "binary" else logits

    def encoder_parameters(self, modality: str) -> list[nn.Parameter]:
        """The parameters of one modality's encoder (what the regulation slows down)."""
        if modality == "ehr":
            return list(self.ehr.parameters())
        if modality == "cxr":
            return list(self.cxr.parameters()) + list(self.cxr_enc.parameters())
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")

    def parts(self, batch) -> dict[str, torch.Tensor]:
        has = (batch.has_cxr > 0).float()[:, None]
        h_ehr = self.ehr(batch)
        h_cxr = self.cxr_enc(self.cxr(batch)) * has
        return {
            "logits": self._out(self.head(torch.cat([h_ehr, h_cxr, has], dim=1))),
            "ehr": self._out(self.head_ehr(h_ehr)),
            "cxr": self._out(self.head_cxr(h_cxr)),
        }

    def forward(self, batch):
        return self.parts(batch)["logits"]

    # ---------------------------------------------------------------- regulation
    def regulation(
        self, out: dict[str, torch.Tensor], y: torch.Tensor, has: torch.Tensor
    ) -> tuple[str | None, float]:
        """The dominant modality on this batch's paired stays and its slow-down factor beta.

        Dominance is the gap in mean true-label confidence of the two unimodal heads; beta is
        ``min(strength * gap, max_beta)``.
        """
        if not bool(has.any()):
            return None, 0.0
        with torch.no_grad():
            s_ehr = float(true_label_confidence(out["ehr"][has], y[has], self.kind))
            s_cxr = float(true_label_confidence(out["cxr"][has], y[has], self.kind))
        gap = s_ehr - s_cxr
        beta = min(self.strength * abs(gap), self.max_beta)
        return ("ehr" if gap > 0 else "cxr"), beta

    def _record_fisher(self) -> None:
        """Accumulate the trace of the empirical Fisher proxy (sum of squared gradients)."""
        total = 0.0
        for modality in MODALITIES:
            for p in self.encoder_parameters(modality):
                if p.grad is not None:
                    total += float(p.grad.detach().pow(2).sum())
        self._fisher_sum += total
        self._fisher_steps += 1

    def update_window(self) -> None:
        """Close the prime learning window once the Fisher trace stops changing quickly.

        With traces F_e per epoch, the window stays open while
        ``|F_e - F_{e-h}| / F_{e-h} > window_threshold`` (h = ``history``); it never reopens.
        """
        hist = self.fisher_history
        if not self.window_open or len(hist) <= self.history:
            return
        old, new = hist[-1 - self.history], hist[-1]
        change = abs(new - old) / max(old, 1e-12)
        if change <= self.window_threshold:
            self.window_open = False
            log.debug("InfoReg: prime learning window closed after %d epochs", len(hist))

    # ---------------------------------------------------------------- harness hooks
    def training_step(self, batch, y, loss_fn, ctx):
        """Joint + unimodal losses; the dominant encoder's step is shrunk by (1 - beta).

        The step itself is scaled (not only the gradient): AdamW divides by the running gradient
        magnitude, so a plain gradient multiplier would leave the update size almost unchanged.
        """
        out = self.parts(batch)
        has = batch.has_cxr > 0
        w = self.unimodal_weight
        loss = loss_fn(out["logits"], y) + w * loss_fn(out["ehr"], y)
        if bool(has.any()):
            loss = loss + w * loss_fn(out["cxr"][has], y[has])
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"InfoReg training loss is {float(loss)}; lower train.lr")
        optimizer = ctx.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._record_fisher()
        dominant, beta = self.regulation(out, y, has) if self.window_open else (None, 0.0)
        self.last_regulation = (dominant, beta)
        slowed = self.encoder_parameters(dominant) if dominant and beta > 0 else []
        before = [p.detach().clone() for p in slowed]
        optimizer.step()
        with torch.no_grad():
            for p, old in zip(slowed, before, strict=True):
                p.copy_(old + (1.0 - beta) * (p - old))
        return None

    def on_epoch_end(self, ctx) -> None:
        if self._fisher_steps:
            self.fisher_history.append(self._fisher_sum / self._fisher_steps)
        self._fisher_sum, self._fisher_steps = 0.0, 0
        self.update_window()
