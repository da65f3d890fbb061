"""BiLSTM student after Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks": embedding → bidirectional LSTM → pooling → MLP head.

The embedding starts from the teacher's WordPiece matrix by default (``embedding_init``), so
the student begins from the teacher's lexical knowledge at no extra cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from students.neural import NeuralStudent, StudentModule
from students.objectives import StudentOutput, suggest_objective
from students.registry import register
from students.training import suggest_loop

POOLINGS = ("max", "mean", "last")


def masked_pool(states: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool [B, T, D] over the non-padding positions: 'max' or 'mean' ('last' needs the final states)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    if how == "mean":
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        return states.masked_fill(m == 0, torch.finfo(states.dtype).min).max(1).values
    raise ValueError(f"unknown pooling {how!r} (expected one of {', '.join(POOLINGS)})")


def final_states(h_n: torch.Tensor) -> torch.Tensor:
    """'last' pooling: each direction's own final state of the top layer, [B, 2H].

    The forward direction ends at the last real token, the backward one at the first: taking
    both outputs at the last position would give the backward direction's state after a single
    token ([SEP], the same for every sentence).
    """
    return torch.cat([h_n[-2], h_n[-1]], dim=-1)


class BiLSTMModule(StudentModule):
    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embedding_dim: int,
        pad_id: int,
        hidden_size: int,
        num_layers: int,
        pooling: str,
        mlp_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id, sparse=True)
        self.lstm = nn.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.sentence_dim = 2 * hidden_size
        self.head = nn.Sequential(
            nn.Linear(2 * hidden_size, mlp_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, num_labels),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StudentOutput:
        x = self.dropout(self.embedding(input_ids))
        if bool(attention_mask.all()):  # no padding (e.g. batch size 1): packing would only cost time
            states, (h_n, _) = self.lstm(x)
        else:
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            states, (h_n, _) = self.lstm(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=input_ids.size(1))
        sentence = final_states(h_n) if self.pooling == "last" else masked_pool(states, attention_mask, self.pooling)
        return StudentOutput(logits=self.head(self.dropout(sentence)), sentence=sentence)


@register("bilstm")
class BiLSTMStudent(NeuralStudent):
    """Tang et al. (2019) BiLSTM; hyper-parameters: hidden_size, num_layers, pooling, mlp_dim, dropout."""

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "hidden_size": 128,
            "num_layers": 1,
            "pooling": "max",
            "mlp_dim": 128,
            "dropout": 0.2,
            "lr": 2e-3,
            "mse_weight": 0.5,
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        return {
            # one layer of at most 192 units: on CPU a wider or deeper LSTM costs as much as the teacher
            "hidden_size": trial.suggest_categorical("hidden_size", [64, 128, 192]),
            "pooling": trial.suggest_categorical("pooling", list(POOLINGS)),
            "mlp_dim": trial.suggest_categorical("mlp_dim", [64, 128, 256]),
            **suggest_loop(trial, batch_sizes=[64, 128, 256]),
            **suggest_objective(trial, extras),
        }

    def build_module(
        self, vocab_size: int, num_labels: int, embedding_dim: int, pad_id: int, cache: Any
    ) -> BiLSTMModule:
        h = self.hparams
        return BiLSTMModule(
            vocab_size,
            num_labels,
            embedding_dim,
            pad_id,
            int(h["hidden_size"]),
            int(h["num_layers"]),
            str(h["pooling"]),
            int(h["mlp_dim"]),
            float(h["dropout"]),
        )
