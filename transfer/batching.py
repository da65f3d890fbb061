"""Batching helpers shared by the teacher's fine-tuning, the cache's labelling and student training.

Sorting by length keeps padding (wasted compute) small; shuffling inside pools of batches keeps
training batches random enough.
"""

from __future__ import annotations

import numpy as np
import torch


def pad_batch(ids: list[np.ndarray], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of id arrays into (input_ids, attention_mask) tensors."""
    width = max(1, max(len(x) for x in ids))
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        out[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return torch.from_numpy(out).to(device), torch.from_numpy(mask).to(device)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool: int = 50
) -> list[np.ndarray]:
    """Shuffle, then sort by length inside pools of ``pool`` batches: random order, little padding."""
    order = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = order[start : start + span]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic batches of similar length, for inference."""
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
