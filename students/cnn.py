"""CNN student after Kim (2014), "Convolutional Neural Networks for Sentence Classification":
embedding → parallel 1-D convolutions of several widths → ReLU → max over time → MLP head.

Like the BiLSTM it reads the teacher's WordPiece ids and starts from the teacher's embedding
matrix by default. It is the cheapest neural student at inference (no recurrence, no attention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from students.neural import NeuralStudent, StudentModule
from students.objectives import StudentOutput, suggest_objective
from students.pruning import select_linear
from students.registry import register
from students.training import suggest_loop

WIDTH_SETS = ["1,2,3", "2,3,4", "3,4,5", "2,3,4,5"]


def parse_widths(value: str | int | Sequence[int]) -> tuple[int, ...]:
    """Filter widths from "3,4,5", 3 or [3, 4, 5] (configs and Optuna give any of these)."""
    if isinstance(value, str):
        parts = [int(p) for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = [int(p) for p in value]
    if not parts or min(parts) < 1:
        raise ValueError(f"filter widths must be positive integers, got {value!r}")
    return tuple(sorted(set(parts)))


class KimCNNModule(StudentModule):
    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embedding_dim: int,
        pad_id: int,
        widths: Sequence[int],
        n_filters: int,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id, sparse=True)
        self.widths = tuple(widths)
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, n_filters, w) for w in self.widths)
        self.dropout = nn.Dropout(dropout)
        self.sentence_dim = n_filters * len(self.widths)
        self.head = nn.Sequential(
            nn.Linear(self.sentence_dim, mlp_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, num_labels),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StudentOutput:
        # Pad to the widest filter so every filter has at least one window on short texts.
        short = max(self.widths) - input_ids.size(1)
        if short > 0:
            attention_mask = F.pad(attention_mask, (0, short))
            input_ids = F.pad(input_ids, (0, short), value=self.embedding.padding_idx or 0)
        mask = attention_mask.to(torch.float32)
        # Zero the padding (its row may hold the teacher's [PAD] vector), so a text's output does
        # not depend on how much padding its batch carries.
        x = self.dropout(self.embedding(input_ids)) * mask.unsqueeze(-1)
        x = x.transpose(1, 2)  # [B, E, T]
        lengths = attention_mask.sum(1)
        pooled = []
        for width, conv in zip(self.widths, self.convs, strict=True):
            feats = F.relu(conv(x))  # [B, F, T - w + 1]
            # Windows starting past the last full window of a text are padding only; a text shorter
            # than the filter keeps its one (padded) window.
            n_valid = (lengths - width + 1).clamp(min=1)
            valid = torch.arange(feats.size(2), device=feats.device).unsqueeze(0) < n_valid.unsqueeze(1)
            feats = feats.masked_fill(~valid.unsqueeze(1), torch.finfo(feats.dtype).min)
            pooled.append(feats.max(dim=2).values)
        sentence = torch.cat(pooled, dim=1)
        return StudentOutput(logits=self.head(self.dropout(sentence)), sentence=sentence)

    # -- structured pruning: filters (students.pruning) ----------------------------------------
    def unit_scores(self) -> dict[str, torch.Tensor]:
        """L2 norm of each filter's weights and bias, one group per filter width."""
        return {
            f"conv{w}": (conv.weight.detach().pow(2).sum((1, 2)) + conv.bias.detach().pow(2)).sqrt()
            for w, conv in zip(self.widths, self.convs, strict=True)
        }

    @torch.no_grad()
    def zero_units(self, pruned: dict[str, torch.Tensor]) -> None:
        """A zeroed filter outputs relu(0) = 0 everywhere, so its max-pooled feature is 0."""
        for w, conv in zip(self.widths, self.convs, strict=True):
            mask = pruned.get(f"conv{w}")
            if mask is not None:
                conv.weight[mask] = 0
                conv.bias[mask] = 0

    def remove_units(self, keep: dict[str, torch.Tensor]) -> None:
        """Narrower convolutions, and the head's matching input columns."""
        columns, offset = [], 0
        for i, (w, conv) in enumerate(zip(self.widths, self.convs, strict=True)):
            kept = keep.get(f"conv{w}", torch.arange(conv.out_channels)).to(conv.weight.device)
            new = nn.Conv1d(conv.in_channels, len(kept), w).to(conv.weight.device)
            with torch.no_grad():
                new.weight.copy_(conv.weight[kept])
                new.bias.copy_(conv.bias[kept])
            self.convs[i] = new
            columns.append(offset + kept)
            offset += conv.out_channels
        self.head[0] = select_linear(self.head[0], cols=torch.cat(columns))
        self.sentence_dim = sum(conv.out_channels for conv in self.convs)


@register("cnn")
class CNNStudent(NeuralStudent):
    """Kim (2014) CNN; hyper-parameters: widths ("3,4,5"), n_filters (per width), mlp_dim, dropout."""

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "widths": "3,4,5",
            "n_filters": 100,
            "mlp_dim": 256,
            "dropout": 0.5,
            "lr": 1e-3,
            "mse_weight": 0.5,
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        return {
            "widths": trial.suggest_categorical("widths", WIDTH_SETS),
            "n_filters": trial.suggest_categorical("n_filters", [50, 100, 200]),
            "mlp_dim": trial.suggest_categorical("mlp_dim", [128, 256, 512]),
            **suggest_loop(trial, batch_sizes=[32, 64, 128], max_dropout=0.6),
            **suggest_objective(trial, extras),
        }

    def build_module(
        self, vocab_size: int, num_labels: int, embedding_dim: int, pad_id: int, cache: Any
    ) -> KimCNNModule:
        h = self.hparams
        return KimCNNModule(
            vocab_size,
            num_labels,
            embedding_dim,
            pad_id,
            parse_widths(h["widths"]),
            int(h["n_filters"]),
            int(h["mlp_dim"]),
            float(h["dropout"]),
        )
