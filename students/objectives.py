"""The distillation objective shared by every neural student.

The loss is a weighted sum of terms, each switched on by a positive weight (a hyper-parameter
Optuna may search):

- ``kd``:   soft cross-entropy to the teacher's distribution at temperature T, scaled by T²
            (Hinton et al. 2015; equals KL up to the teacher's entropy, a constant);
- ``mse``:  mean squared error between student and teacher logits (Ba & Caruana 2014; Tang et al. 2019);
- ``ce``:   cross-entropy with the gold label, for examples that have one (label >= 0);
- ``hidden``: the student's sentence representation → one cached teacher layer, through a learned
            linear projection, MSE or cosine (FitNets; Kim & Rush 2016).

Terms that need learned parameters (projections) make the objective an ``nn.Module``; its
parameters are trained with the student's and thrown away afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ObjectiveConfig:
    kd_weight: float = 1.0
    temperature: float = 2.0
    mse_weight: float = 0.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_layer: int = -1  # which cached teacher layer (index into activations; -1 = top)
    hidden_loss: str = "mse"  # "mse" | "cosine"

    @classmethod
    def from_hparams(cls, hparams: dict[str, Any]) -> ObjectiveConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in hparams.items() if k in names})

    @classmethod
    def hparam_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class StudentOutput:
    """What a neural student's forward returns."""

    logits: torch.Tensor  # [B, C]
    sentence: torch.Tensor  # [B, D] the representation fed to the classifier head
    layers: list[torch.Tensor] | None = None  # per-layer pooled states [B, D_l] (BERT-like students)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · CE(softmax(t/T), softmax(s/T)), averaged over the batch."""
    t = temperature
    target = F.softmax(teacher_logits / t, dim=-1)
    return -(target * F.log_softmax(student_logits / t, dim=-1)).sum(-1).mean() * t * t


def representation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between matched representations: 'mse' or 'cosine' (1 - cos)."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown representation loss {kind!r} (expected 'mse' or 'cosine')")


class DistillationObjective(nn.Module):
    """Callable loss: ``objective(output, batch) -> (loss, {term: value})``."""

    def __init__(self, config: ObjectiveConfig, student_dim: int, teacher_dim: int | None) -> None:
        super().__init__()
        self.config = config
        self.hidden_proj: nn.Module | None = None
        if config.hidden_weight > 0:
            if teacher_dim is None:
                raise ValueError("hidden_weight > 0 needs a cache with teacher activations")
            self.hidden_proj = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim, teacher_dim)

    @property
    def needs_activations(self) -> bool:
        return self.config.hidden_weight > 0

    def forward(self, out: StudentOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        teacher_logits = batch["teacher_logits"]
        terms: dict[str, torch.Tensor] = {}
        if c.kd_weight > 0:
            terms["kd"] = c.kd_weight * soft_cross_entropy(out.logits, teacher_logits, c.temperature)
        if c.mse_weight > 0:
            terms["mse"] = c.mse_weight * F.mse_loss(out.logits, teacher_logits)
        if c.ce_weight > 0:
            labels = batch["labels"]
            has_label = labels >= 0
            if bool(has_label.any()):
                terms["ce"] = c.ce_weight * F.cross_entropy(out.logits[has_label], labels[has_label])
        if self.hidden_proj is not None:
            target = batch["teacher_activations"][:, c.hidden_layer]
            terms["hidden"] = c.hidden_weight * representation_loss(
                self.hidden_proj(out.sentence), target, c.hidden_loss
            )
        if not terms:
            raise ValueError("the distillation objective has no term with a positive weight")
        loss = torch.stack(list(terms.values())).sum()
        return loss, {k: float(v.detach()) for k, v in terms.items()}


def suggest_objective(trial: Any) -> dict[str, Any]:
    """The shared part of every neural student's search space: how much of each signal to use."""
    return {
        "kd_weight": trial.suggest_float("kd_weight", 0.0, 1.0),
        "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
        "mse_weight": trial.suggest_float("mse_weight", 0.0, 1.0),
        "ce_weight": trial.suggest_float("ce_weight", 0.0, 0.5),
    }
