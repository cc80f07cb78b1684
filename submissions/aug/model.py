"""AUG: alternating unimodal updates through a shared head, with sustained boosting of the
weaker modality by classifiers added during training."""

from __future__ import annotations

import logging
from dataclasses import fields

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.blocks import CXRInput, EHRTransformerEncoder

log = logging.getLogger(__name__)


def true_label_confidence(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean probability given to the true label (per label for multilabel): higher is better."""
    if kind == "multiclass":
        return torch.softmax(logits, dim=-1).gather(1, y.long()[:, None]).mean()
    p = torch.sigmoid(logits)
    return torch.where(y > 0.5, p, 1 - p).mean()


def _rows(batch, keep: torch.Tensor):
    """The stays ``keep`` of a batch (every field, so ``len`` and masks stay consistent)."""
    changes = {
        f.name: getattr(batch, f.name)[keep]
        for f in fields(batch)
        if getattr(batch, f.name) is not None
    }
    return batch.replace(**changes)


class AUG(nn.Module):
    """Per modality: an encoder and a bank of boosting classifiers sharing one output layer.

    Every classifier of the bank is built in ``__init__`` (so the harness's optimiser holds all
    of them from the first step); the buffers ``n_active_ehr`` / ``n_active_cxr`` say how many
    are in use. Adding a classifier means increasing that count, and being buffers, the counts are
    saved with the checkpoint the harness restores.
    """

    def __init__(
        self,
        spec,
        d_model: int = 32,
        heads: int = 4,
        layers: int = 1,
        cxr_hidden: int = 32,
        dropout: float = 0.2,
        alpha: float = 0.6,
        balance: float = 1.0,
        tolerance: float = 0.02,
        check_every: int = 5,
        max_classifiers: int = 3,
        residual_weight: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if max_classifiers < 1 or check_every < 1:
            raise ValueError("max_classifiers and check_every must be >= 1")
        self.kind = spec.task_kind
        self.n_outputs = spec.n_outputs
        self.ehr = EHRTransformerEncoder(
            spec.ehr_dim, d_model, heads=heads, layers=layers, dropout=dropout, seq_len=spec.seq_len
        )
        self.cxr = CXRInput(spec)
        self.cxr_enc = nn.Sequential(nn.Linear(spec.cxr_dim, d_model), nn.ReLU())
        self.banks = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    nn.Sequential(nn.Linear(d_model, cxr_hidden), nn.ReLU(), nn.Dropout(dropout))
                    for _ in range(max_classifiers)
                )
                for m in ("ehr", "cxr")
            }
        )
        # One output layer shared by both modalities and every classifier (no bias: each
        # modality has its own, so adding classifiers does not add up biases).
        self.shared_out = nn.Linear(cxr_hidden, spec.n_outputs, bias=False)
        self.bias = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(spec.n_outputs)) for m in ("ehr", "cxr")}
        )
        self.register_buffer("n_active_ehr", torch.tensor(1, dtype=torch.long))
        self.register_buffer("n_active_cxr", torch.tensor(1, dtype=torch.long))
        self.alpha = alpha
        self.balance = balance
        self.tolerance = tolerance
        self.check_every = check_every
        self.max_classifiers = max_classifiers
        self.residual_weight = residual_weight
        self._scores = {"ehr": [0.0, 0], "cxr": [0.0, 0]}
        self.boost_log: list[tuple[int, str]] = []

    # ---------------------------------------------------------------- model
    def n_active(self, modality: str) -> int:
        return int(getattr(self, f"n_active_{modality}"))

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0] if self.kind == "binary" else logits

    def encode(self, batch, modality: str) -> torch.Tensor:
        if modality == "ehr":
            return self.ehr(batch)
        return self.cxr_enc(self.cxr(batch))

    def classifier_outputs(self, h: torch.Tensor, modality: str) -> list[torch.Tensor]:
        """Logit contribution of each active classifier; the modality's logits are their sum."""
        bank = self.banks[modality]
        outs = [self.shared_out(bank[k](h)) for k in range(self.n_active(modality))]
        outs[0] = outs[0] + self.bias[modality]
        return [self._out(o) for o in outs]

    def modality_logits(self, batch, modality: str) -> torch.Tensor:
        return torch.stack(self.classifier_outputs(self.encode(batch, modality), modality)).sum(0)

    def forward(self, batch):
        ehr = self.modality_logits(batch, "ehr")
        cxr = self.modality_logits(batch, "cxr")
        has = (batch.has_cxr > 0).reshape(-1, *([1] * (ehr.dim() - 1)))
        # Without an image the EHR prediction stands alone (no zero image is scored).
        return torch.where(has, self.alpha * ehr + (1 - self.alpha) * cxr, ehr)

    # ---------------------------------------------------------------- boosting
    def _link(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, -1) if self.kind == "multiclass" else torch.sigmoid(logits)

    def _target(self, y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y.long(), self.n_outputs).float() if self.kind == "multiclass" else y

    def boosted_loss(self, outs: list[torch.Tensor], y: torch.Tensor, loss_fn) -> torch.Tensor:
        """Classification error of the ensemble + residual error of the newest classifier.

        The newest classifier is fitted (squared error) to the residual ``target - link(previous
        classifiers)``, the negative gradient of the loss at the previous ensemble.
        """
        loss = loss_fn(torch.stack(outs).sum(0), y)
        if len(outs) > 1:
            previous = torch.stack(outs[:-1]).sum(0).detach()
            residual = self._target(y) - self._link(previous)
            loss = loss + self.residual_weight * F.mse_loss(outs[-1], residual)
        return loss

    def maybe_boost(self, epoch: int) -> str | None:
        """Add a classifier to the weaker modality if the score ratio leaves balance ± tolerance."""
        (se, ne), (sc, nc) = self._scores["ehr"], self._scores["cxr"]
        self._scores = {"ehr": [0.0, 0], "cxr": [0.0, 0]}
        if epoch % self.check_every or not ne or not nc:
            return None
        ratio = (se / ne) / max(sc / nc, 1e-12)
        if ratio > self.balance + self.tolerance:
            weak = "cxr"
        elif ratio < self.balance - self.tolerance:
            weak = "ehr"
        else:
            return None
        if self.n_active(weak) >= self.max_classifiers:
            return None
        getattr(self, f"n_active_{weak}").add_(1)
        self.boost_log.append((epoch, weak))
        log.debug("AUG epoch %d: score ratio %.3f, classifier added to %s", epoch, ratio, weak)
        return weak

    # ---------------------------------------------------------------- harness hooks
    def training_step(self, batch, y, loss_fn, ctx):
        """Alternating updates: an EHR step, then a CXR step on the stays with an image."""
        optimizer = ctx.optimizer
        has = batch.has_cxr > 0
        for modality in ("ehr", "cxr"):
            if modality == "cxr" and not bool(has.any()):
                continue
            sub = batch if modality == "ehr" else _rows(batch, has)
            target = y if modality == "ehr" else y[has]
            outs = self.classifier_outputs(self.encode(sub, modality), modality)
            loss = self.boosted_loss(outs, target, loss_fn)
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"AUG {modality} loss is {float(loss)}; lower train.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if bool(has.any()):  # scores on paired stays, so the two modalities are comparable
                with torch.no_grad():
                    logits = torch.stack(outs).sum(0)
                    logits = logits[has] if modality == "ehr" else logits
                    score = float(true_label_confidence(logits, y[has], self.kind))
                self._scores[modality][0] += score
                self._scores[modality][1] += 1
        return None

    def on_epoch_end(self, ctx) -> None:
        self.maybe_boost(ctx.epoch)
