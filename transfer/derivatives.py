"""Derivative matching (Sobolev training): the input derivatives a student matches, in one form for all.

Papamakarios (2015) and Czarnecki et al. (2017) match ∂o/∂x besides o. Here x is the output of
the WordPiece embedding lookup (one vector per token) and the matched quantity is the
*gradient × input* attribution of every logit to every token:

    a[t, c] = Σ_d ∂z_c/∂x[t, d] · x[t, d]

one number per (token, class), whatever the model's width, so a 300-wide BiLSTM, a CNN and a
384-wide BERT all match the same target, and the cache stays small: ``float16 [N, T, C]`` with
T the teacher's ``max_length`` (zeros past a text's end). Per 100K sentences that is
100,000 × T × C × 2 bytes: 25.6 MB for SST-2 with MiniLM (T = 64, C = 2), against 537.6 MB for
the 7 × 384 pooled activations the cache already holds.

Token-by-token alignment needs the student to read the teacher's WordPiece ids, which every
neural student does (it loads the tokenizer stored in the cache). Positions where the
student's ids differ from the teacher's (another ``max_length`` truncates elsewhere) are left
out of the loss; a student with another vocabulary is refused (``check_same_tokenizer``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FORM = "grad_x_input/word_embeddings/v1"  # enters the cache key of caches that hold derivatives


def gradient_times_input(logits: torch.Tensor, inputs: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """[B, T, C]: Σ_d ∂logits[b, c]/∂inputs[b, t, d] · inputs[b, t, d], one backward pass per class.

    Examples in a batch are independent (no batch statistics), so the gradient of the batch sum
    of a class's logit is every example's own gradient. ``create_graph`` keeps the graph of the
    gradients (double backward) so that a loss on them trains the model.
    """
    n_classes = logits.shape[-1]
    columns = []
    for c in range(n_classes):
        (grad,) = torch.autograd.grad(
            logits[:, c].sum(), inputs, create_graph=create_graph, retain_graph=create_graph or c < n_classes - 1
        )
        columns.append((grad * inputs).sum(-1))
    return torch.stack(columns, dim=-1)


def vocabulary_hash(tokenizer: Any) -> str:
    """Identity of a tokenizer's vocabulary (token → id), to check that two parties read the same ids."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def aligned_lengths(student_ids: Sequence[np.ndarray], teacher_ids: Sequence[np.ndarray]) -> np.ndarray:
    """Per text, how many leading positions carry the same token id for the student and the teacher."""
    out = np.zeros(len(student_ids), dtype=np.int64)
    for i, (s, t) in enumerate(zip(student_ids, teacher_ids, strict=True)):
        n = min(len(s), len(t))
        differ = np.nonzero(np.asarray(s[:n]) != np.asarray(t[:n]))[0]
        out[i] = differ[0] if len(differ) else n
    return out


def derivative_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the attributions over aligned (token, class) pairs; [B, T, C] and [B, T]."""
    width = min(student.shape[1], teacher.shape[1], mask.shape[1])
    diff = (student[:, :width] - teacher[:, :width].to(student.dtype)) ** 2
    m = mask[:, :width].to(student.dtype).unsqueeze(-1)
    return (diff * m).sum() / (m.sum() * student.shape[-1]).clamp(min=1.0)
