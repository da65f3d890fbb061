"""Distillation with pruning: gradual magnitude pruning during training (Zhu & Gupta 2017).

Kim & Rush (2016) found distillation and pruning orthogonal: a distilled student can still be
pruned. Here the pruning happens *while* it distils, in the one training loop, for every neural
student. The sparsity follows Zhu & Gupta's cubic schedule

    s_t = s_f + (s_i − s_f) · (1 − (t − t_0) / (t_1 − t_0))³    for t_0 ≤ t ≤ t_1

(s_i = 0, s_f = ``sparsity``; t_0, t_1 = ``prune_start``, ``prune_end`` as fractions of the
training steps): fast at first, when many weights are redundant, slow near the target. Masks
are recomputed every ``prune_every`` steps from the current magnitudes and applied after every
optimiser step; a pruned weight never comes back.

Two structures:

- ``unstructured``: each weight matrix (every non-embedding parameter with ≥ 2 dimensions) loses
  its smallest-magnitude entries, to the same sparsity per matrix. Dense kernels do not get
  faster, and a dense file does not get smaller: such a student is saved with its sparse
  matrices in CSR form (int32 indices) where that is smaller, and only that is claimed.
- ``structured``: whole units — BiLSTM hidden units, CNN filters, BERT attention heads and
  feed-forward neurons — are scored by the L2 norm of their weights and the weakest are zeroed
  (a zeroed unit's output is exactly 0, so the masked network computes the same function as
  the smaller one). After training the units are physically removed (``remove_units``): fewer
  parameters, a smaller file and a lower latency. Every module declares its units with
  ``unit_scores``, ``zero_units`` and ``remove_units`` (``students.neural.StudentModule``).

Embedding tables are never pruned (the WordPiece table is a lookup, not compute).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

STRUCTURES = ("structured", "unstructured")
MIN_UNITS = 1  # a group (one LSTM direction, one filter width, one layer's heads) always keeps a unit


def cubic_sparsity(step: int, total: int, target: float, start: float = 0.0, end: float = 0.7) -> float:
    """Zhu & Gupta's sparsity at ``step`` of ``total``: 0 before ``start``, ``target`` from ``end`` (fractions)."""
    if target <= 0:
        return 0.0
    t0, t1 = start * total, end * total
    if step < t0:
        return 0.0
    if step >= t1 or t1 <= t0:
        return target
    return target * (1.0 - (1.0 - (step - t0) / (t1 - t0)) ** 3)


def kept_count(n: int, sparsity: float) -> int:
    """Units a group of ``n`` keeps at ``sparsity`` (at least MIN_UNITS)."""
    return max(MIN_UNITS, min(n, round(n * (1.0 - sparsity))))


def check_prune_settings(sparsity: float, structure: str, start: float, end: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if structure not in STRUCTURES:
        raise ValueError(f"unknown prune_structure {structure!r} (expected one of {', '.join(STRUCTURES)})")
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"need 0 ≤ prune_start < prune_end ≤ 1 (fractions of training), got {start} and {end}")


def embedding_ids(model: nn.Module) -> set[int]:
    embedding = getattr(model, "embedding_parameters", None)
    params = embedding() if callable(embedding) else [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    return {id(p) for p in params}


def prunable_matrices(model: nn.Module) -> list[nn.Parameter]:
    """Unstructured pruning's targets: every non-embedding parameter with at least 2 dimensions."""
    skip = embedding_ids(model)
    return [p for p in model.parameters() if p.dim() >= 2 and id(p) not in skip]


def zero_fraction(model: nn.Module) -> float:
    """Share of the non-embedding parameters that are exactly zero (the achieved sparsity before removal)."""
    skip = embedding_ids(model)
    params = [p for p in model.parameters() if id(p) not in skip]
    total = sum(p.numel() for p in params)
    return sum(int((p == 0).sum()) for p in params) / total if total else 0.0


class GradualPruner:
    """Owns the masks of one model during training; ``step`` after every optimiser step."""

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        structure: str,
        total_steps: int,
        start: float = 0.0,
        end: float = 0.7,
        every: int = 10,
    ) -> None:
        check_prune_settings(sparsity, structure, start, end)
        self.model, self.target, self.structure = model, sparsity, structure
        self.total, self.start, self.end, self.every = max(1, total_steps), start, end, max(1, every)
        self.current = 0.0
        self.masks: dict[int, torch.Tensor] = {}  # unstructured: id(param) -> keep mask
        self.pruned: dict[str, torch.Tensor] = {}  # structured: group -> pruned-unit mask
        if structure == "structured":
            scores = getattr(model, "unit_scores", lambda: {})()
            if not scores:
                raise ValueError(f"{type(model).__name__} declares no prunable units: use prune_structure=unstructured")

    def reached_target(self) -> bool:
        """True once the schedule is at its final sparsity (only such models may be kept as the best)."""
        return self.current >= self.target

    @torch.no_grad()
    def set_sparsity(self, sparsity: float) -> None:
        """Recompute the masks for ``sparsity`` from the current magnitudes and apply them."""
        self.current = sparsity
        if self.structure == "structured":
            scores = self.model.unit_scores()  # type: ignore[operator]
            for name, score in scores.items():
                score = score.detach().float().clone()
                if name in self.pruned:  # once pruned, always pruned
                    score[self.pruned[name].to(score.device)] = -math.inf
                keep = kept_count(len(score), sparsity)
                pruned = torch.ones(len(score), dtype=torch.bool, device=score.device)
                pruned[torch.topk(score, keep).indices] = False
                self.pruned[name] = pruned
        else:
            for p in prunable_matrices(self.model):
                n_prune = int(p.numel() * sparsity)
                magnitude = p.detach().abs().flatten().clone()
                if id(p) in self.masks:
                    magnitude[~self.masks[id(p)].flatten()] = -1.0
                keep = torch.ones(p.numel(), dtype=torch.bool, device=p.device)
                if n_prune:
                    keep[torch.argsort(magnitude)[:n_prune]] = False
                self.masks[id(p)] = keep.view_as(p)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned weight (after each optimiser step: AdamW would move them again)."""
        if self.structure == "structured":
            if self.pruned:
                self.model.zero_units(self.pruned)  # type: ignore[operator]
            return
        for p in prunable_matrices(self.model):
            mask = self.masks.get(id(p))
            if mask is not None:
                p.mul_(mask.to(p.dtype))

    def step(self, step: int) -> None:
        """After optimiser step ``step`` (1-based): follow the schedule every ``every`` steps, then re-mask."""
        wanted = cubic_sparsity(step, self.total, self.target, self.start, self.end)
        if wanted > self.current and (step % self.every == 0 or wanted >= self.target):
            self.set_sparsity(wanted)
        else:
            self.apply()

    def kept_units(self) -> dict[str, list[int]] | None:
        """Structured: the indices each group keeps (what ``remove_units`` needs); None when unstructured."""
        if self.structure != "structured":
            return None
        return {name: torch.nonzero(~mask).flatten().tolist() for name, mask in self.pruned.items()}


def remove_pruned(model: nn.Module, kept: dict[str, list[int]]) -> dict[str, int]:
    """Physically remove every unit not in ``kept``; returns the unit count of each group (for loading)."""
    model.remove_units({name: torch.tensor(idx, dtype=torch.long) for name, idx in kept.items()})  # type: ignore[operator]
    return {name: len(idx) for name, idx in kept.items()}


def shrink_to_counts(model: nn.Module, counts: dict[str, int]) -> None:
    """Give a freshly built model the shapes of a saved pruned one (its weights are loaded next)."""
    model.remove_units({name: torch.arange(k) for name, k in counts.items()})  # type: ignore[operator]


# -- helpers the modules use to remove units -------------------------------------------------------


def select_linear(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear with only output ``rows`` and input ``cols`` of ``layer`` (None = all)."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    bias = layer.bias.detach() if layer.bias is not None else None
    if bias is not None and rows is not None:
        bias = bias[rows.to(bias.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def gate_rows(units: torch.Tensor, hidden: int, gates: int = 4) -> torch.Tensor:
    """Rows of an LSTM weight that belong to ``units`` (gate-major layout: i, f, g, o blocks of ``hidden``)."""
    return torch.cat([g * hidden + units for g in range(gates)])


# -- sparse storage of unstructured weights --------------------------------------------------------

_SPARSE = "::csr"


def pack_sparse(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Matrices stored as CSR (int32 indices, as 2-D) where that takes fewer bytes than dense; others as they are."""
    out: dict[str, Any] = {}
    for name, tensor in state.items():
        if tensor.dim() >= 2 and tensor.is_floating_point():
            matrix = tensor.reshape(tensor.shape[0], -1)
            nnz = int((matrix != 0).sum())
            sparse_bytes = nnz * (tensor.element_size() + 4) + (matrix.shape[0] + 1) * 4
            if sparse_bytes < tensor.numel() * tensor.element_size():
                csr = matrix.to_sparse_csr()
                out[name + _SPARSE] = {
                    "crow": csr.crow_indices().to(torch.int32),
                    "col": csr.col_indices().to(torch.int32),
                    "values": csr.values(),
                    "shape": list(tensor.shape),
                }
                continue
        out[name] = tensor
    return out


def unpack_sparse(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The dense state dict back from ``pack_sparse`` (a plain state dict passes through unchanged)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name.endswith(_SPARSE):
            shape = value["shape"]
            rows, cols = shape[0], math.prod(shape[1:])
            csr = torch.sparse_csr_tensor(value["crow"].long(), value["col"].long(), value["values"], size=(rows, cols))
            out[name[: -len(_SPARSE)]] = csr.to_dense().reshape(shape)
        else:
            out[name] = value
    return out
