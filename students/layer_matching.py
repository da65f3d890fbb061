"""Intermediate-layer distillation: match a student's per-layer states to the teacher's cached ones.

The cache holds, for every text, the teacher's mean-pooled hidden state of every layer (index 0 =
embeddings output). A student that reports the same kind of pooled states in
``StudentOutput.layers`` (mean over non-padding tokens, index 0 = embeddings) can be pulled
towards them layer by layer, as in PKD (Sun et al. 2019) and TinyBERT (Jiao et al. 2020), but on
pooled states so the cache stays small. Student layer ``j`` (1-based, the output of its j-th
block) is matched with teacher layer ``round(j * L_t / L_s)``: the top matches the top and the
others spread evenly. A learned linear projection bridges different widths.

The module is generic: any neural student returning ``layers`` can add it through
``NeuralStudent.extra_objective``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from students.objectives import StudentOutput, representation_loss


def uniform_layer_map(n_student: int, n_teacher: int, match_embeddings: bool = True) -> list[tuple[int, int]]:
    """(student index, teacher index) pairs into pooled-state lists (index 0 = embeddings).

    ``n_student``/``n_teacher`` count transformer blocks (the lists hold one more entry). A teacher
    with no blocks (a single cached state, e.g. a student labeler's sentence vector) is matched
    by the student's top layer only.
    """
    if n_student < 1:
        raise ValueError("layer matching needs a student with at least one layer")
    if n_teacher < 1:
        return [(n_student, 0)]
    pairs = [(0, 0)] if match_embeddings else []
    pairs += [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]
    return pairs


class LayerMatchingLoss(nn.Module):
    """``weight`` · mean over mapped pairs of MSE / (1 - cosine) between projected student and teacher states.

    Call it like the distillation objective: ``loss(output, batch) -> (loss, {"layers": value})``;
    it reads ``output.layers`` and ``batch["teacher_activations"]`` [B, L_t + 1, H_t].
    """

    needs_activations = True

    def __init__(
        self,
        mapping: Sequence[tuple[int, int]],
        student_dims: Sequence[int],
        teacher_dim: int,
        weight: float = 1.0,
        kind: str = "mse",
    ) -> None:
        super().__init__()
        if kind not in ("mse", "cosine"):
            raise ValueError(f"unknown layer loss {kind!r} (expected 'mse' or 'cosine')")
        self.mapping = [(int(s), int(t)) for s, t in mapping]
        self.weight = float(weight)
        self.kind = kind
        self.projections = nn.ModuleList(
            nn.Identity() if int(student_dims[s]) == teacher_dim else nn.Linear(int(student_dims[s]), teacher_dim)
            for s, _ in self.mapping
        )

    def forward(self, out: StudentOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if out.layers is None:
            raise ValueError("layer matching needs a student whose output carries per-layer states (layers)")
        teacher = batch["teacher_activations"]
        losses = [
            representation_loss(proj(out.layers[s]).float(), teacher[:, t].float(), self.kind)
            for (s, t), proj in zip(self.mapping, self.projections, strict=True)
        ]
        loss = self.weight * torch.stack(losses).mean()
        return loss, {"layers": float(loss.detach())}
