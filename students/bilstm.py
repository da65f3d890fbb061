"""BiLSTM student after Tang et al. (2019), "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks": embedding → bidirectional LSTM → pooling → MLP head.

The embedding starts from the teacher's WordPiece matrix by default (``embedding_init``), so
the student begins from the teacher's lexical knowledge at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from students.neural import NeuralStudent, StudentModule
from students.objectives import StudentOutput, suggest_objective
from students.pruning import gate_rows, select_linear
from students.registry import register
from students.training import suggest_loop

POOLINGS = ("max", "mean", "last")


def masked_pool(states: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """Pool [B, T, D] over the non-padding positions: 'max' or 'mean' ('last' needs the final states).

    ``mask`` None: no position is padding (batch 1), so the plain reduction serves without masking.
    """
    if how == "mean":
        if mask is None:
            return states.mean(1)
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(1) / m.sum(1).clamp(min=1.0)
    if how == "max":
        if mask is not None:
            states = states.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(states.dtype).min)
        return states.max(1).values
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
        padded = not bool(attention_mask.all())
        if not padded:  # e.g. batch size 1: packing and masked pooling would only cost time
            states, (h_n, _) = self.lstm(x)
        else:
            lengths = attention_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            states, (h_n, _) = self.lstm(packed)
            states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True, total_length=input_ids.size(1))
        sentence = (
            final_states(h_n)
            if self.pooling == "last"
            else masked_pool(states, attention_mask if padded else None, self.pooling)
        )
        return StudentOutput(logits=self.head(self.dropout(sentence)), sentence=sentence)

    # -- structured pruning: hidden units (students.pruning) ----------------------------------
    def _directions(self) -> list[str]:
        """Parameter suffixes of every (layer, direction): one unit group each."""
        return [f"l{layer}{sfx}" for layer in range(self.lstm.num_layers) for sfx in ("", "_reverse")]

    def unit_scores(self) -> dict[str, torch.Tensor]:
        """L2 norm of each hidden unit's gate rows (input and recurrent weights), per layer and direction."""
        hidden = self.lstm.hidden_size
        scores = {}
        for d in self._directions():
            w_ih = getattr(self.lstm, f"weight_ih_{d}").detach().view(4, hidden, -1)
            w_hh = getattr(self.lstm, f"weight_hh_{d}").detach().view(4, hidden, -1)
            scores[d] = (w_ih.pow(2).sum((0, 2)) + w_hh.pow(2).sum((0, 2))).sqrt()
        return scores

    @torch.no_grad()
    def zero_units(self, pruned: dict[str, torch.Tensor]) -> None:
        """Zero a unit's gate rows and biases: its gates sit at σ(0), tanh(0) = 0, so its state and output stay 0."""
        hidden = self.lstm.hidden_size
        for d, mask in pruned.items():
            units = torch.nonzero(mask).flatten()
            rows = gate_rows(units, hidden)
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.lstm, f"{kind}_{d}")[rows] = 0
            getattr(self.lstm, f"weight_hh_{d}")[:, units] = 0

    def remove_units(self, keep: dict[str, torch.Tensor]) -> None:
        """A narrower LSTM (the same number of units kept in every layer and direction) and head."""
        old, hidden = self.lstm, self.lstm.hidden_size
        sizes = {len(k) for k in keep.values()}
        if len(sizes) != 1 or set(keep) != set(self._directions()):
            raise ValueError(f"an LSTM keeps the same number of units in every layer and direction, got {keep}")
        new_hidden = sizes.pop()
        new = nn.LSTM(
            old.input_size,
            new_hidden,
            num_layers=old.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=old.dropout,
        ).to(old.weight_hh_l0.device)
        with torch.no_grad():
            for layer in range(old.num_layers):
                below = None
                if layer > 0:
                    below = torch.cat([keep[f"l{layer - 1}"], hidden + keep[f"l{layer - 1}_reverse"]])
                for sfx in ("", "_reverse"):
                    d = f"l{layer}{sfx}"
                    rows = gate_rows(keep[d], hidden)
                    w_ih = getattr(old, f"weight_ih_{d}")[rows]
                    getattr(new, f"weight_ih_{d}").copy_(w_ih if below is None else w_ih[:, below])
                    getattr(new, f"weight_hh_{d}").copy_(getattr(old, f"weight_hh_{d}")[rows][:, keep[d]])
                    getattr(new, f"bias_ih_{d}").copy_(getattr(old, f"bias_ih_{d}")[rows])
                    getattr(new, f"bias_hh_{d}").copy_(getattr(old, f"bias_hh_{d}")[rows])
        top = old.num_layers - 1
        self.lstm = new
        self.head[0] = select_linear(self.head[0], cols=torch.cat([keep[f"l{top}"], hidden + keep[f"l{top}_reverse"]]))
        self.sentence_dim = 2 * new_hidden


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

    def serving_predictor(self) -> tuple[str, Callable[[Sequence[str]], np.ndarray]]:
        """On CPU, the folded export (``students.export.FoldedBiLSTM``, float32, every vocabulary row).

        The same logits as the module (each token's input projection is read from a table, not
        recomputed) in a fraction of its batch-1 time on CPU, where one PyTorch LSTM call spends
        most of a short sentence's time before its first step. On a GPU, int8 or with stacked
        layers (folding needs one), the module serves.
        """
        if self.module is None or self.int8 or self.device.type != "cpu" or self.module.lstm.num_layers != 1:
            return super().serving_predictor()
        from students.export import FoldedBiLSTM

        return "folded", FoldedBiLSTM.from_student(self).predict_logits

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
