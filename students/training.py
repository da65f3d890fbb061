"""The one training loop every neural student uses.

AdamW with linear warm-up and decay, gradient clipping, length-bucketed batches (little
padding), per-epoch dev evaluation with early stopping on the task metric, and a pruning
report after every epoch. A non-finite loss stops the run with ``NonFiniteLoss`` so a study
can record the reason and move on.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from students.objectives import DistillationObjective, StudentOutput
from students.pruning import GradualPruner, zero_fraction
from transfer.batching import bucketed_batches, pad_batch
from transfer.settings import FromMapping


class CombinedObjective(nn.Module):
    """The shared objective plus extra loss modules (e.g. layer matching), summed.

    Each part is called as ``part(output, batch) -> (loss, {term: value})`` and may expose
    ``needs_activations``; wrapping keeps ``train_loop`` unaware of how many terms a student adds.
    """

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    @property
    def needs_activations(self) -> bool:
        return any(bool(getattr(part, "needs_activations", False)) for part in self.parts)

    @property
    def needs_derivatives(self) -> bool:
        return any(bool(getattr(part, "needs_derivatives", False)) for part in self.parts)

    def forward(self, out: StudentOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        losses, terms = [], {}
        for part in self.parts:
            loss, part_terms = part(out, batch)
            losses.append(loss)
            terms |= part_terms
        return torch.stack(losses).sum(), terms


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite (diverged hyper-parameters)."""


@dataclass
class LoopConfig(FromMapping):
    """The training loop's hyper-parameters and their defaults: the one place they are written."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_clip: float = 1.0
    patience: int = 2  # epochs without dev improvement before stopping
    seed: int = 0
    # Gradual magnitude pruning during distillation (students.pruning; Zhu & Gupta 2017's cubic schedule)
    sparsity: float = 0.0  # final share of pruned weights (unstructured) or units (structured); 0 = off
    prune_structure: str = "structured"  # "structured": LSTM units, CNN filters, BERT heads/neurons; "unstructured"
    prune_start: float = 0.0  # fraction of the training steps where pruning starts
    prune_end: float = 0.7  # fraction of the training steps where the target sparsity is reached
    prune_every: int = 10  # steps between mask updates


@dataclass
class TrainingData:
    """Token ids (ragged) plus the per-example targets the objective may use."""

    ids: list[np.ndarray]
    teacher_logits: np.ndarray  # [N, C]
    labels: np.ndarray  # [N], -1 = none
    teacher_activations: np.ndarray | None = None  # [N, L, H]
    teacher_derivatives: np.ndarray | None = None  # [N, T, C] gradient × input per teacher token
    derivative_lengths: np.ndarray | None = None  # [N] leading positions whose ids match the teacher's

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    seconds: float = 0.0
    sparsity: float = 0.0  # share of the non-embedding weights that are zero at the end (pruned)
    kept_units: dict[str, list[int]] | None = None  # structured pruning: the units each group keeps


def _rows(array: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array[idx]`` as a float tensor; memmaps want sorted indices, so sort and restore the batch order."""
    values = np.asarray(array[np.sort(idx)], dtype=np.float32)
    return torch.from_numpy(values[np.argsort(np.argsort(idx))]).to(device)


def derivative_targets(data: TrainingData, idx: np.ndarray, width: int, device: torch.device) -> dict:
    """The teacher's attributions cropped or padded to the batch's width, and the aligned-position mask."""
    derivs = _rows(data.teacher_derivatives, idx, device)[:, :width]  # type: ignore[arg-type]
    if derivs.shape[1] < width:
        derivs = torch.nn.functional.pad(derivs, (0, 0, 0, width - derivs.shape[1]))
    lengths = torch.as_tensor(np.asarray(data.derivative_lengths)[idx], device=device)  # type: ignore[index]
    mask = torch.arange(width, device=device).unsqueeze(0) < lengths.unsqueeze(1)
    return {"teacher_derivatives": derivs, "derivative_mask": mask}


class EmbeddingCapture:
    """Within ``with``: records the word-embedding output of each forward, as a tensor gradients can reach.

    cuDNN's RNN kernels and the fused attention kernels (flash, memory-efficient) have no double
    backward, so meanwhile cuDNN is off and attention uses the plain math kernel (CPU runs as before).
    """

    def __init__(self, model: nn.Module) -> None:
        lookup = getattr(model, "word_embeddings", None)
        if not callable(lookup):
            raise ValueError(f"{type(model).__name__} does not say which module is its word embedding")
        self.module: nn.Module = lookup()
        self.output: torch.Tensor | None = None
        self._handle: Any = None
        self._stack = contextlib.ExitStack()

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # a frozen table: differentiate w.r.t. its output all the same
            output = output.detach().requires_grad_(True)
        self.output = output
        return output

    def __enter__(self) -> EmbeddingCapture:
        self.output = None
        self._handle = self.module.register_forward_hook(self._hook)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        if any(p.is_cuda for p in self.module.parameters()):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            self._stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._handle.remove()
        self._stack.close()


def train_loop(
    model: nn.Module,
    objective: DistillationObjective | CombinedObjective,
    data: TrainingData,
    config: LoopConfig,
    pad_id: int,
    device: torch.device,
    evaluate: Callable[[], float] | None = None,
    report: Callable[[int, float], None] | None = None,
    progress: bool = False,
) -> History:
    """Train ``model`` in place; returns its history and leaves the best-on-dev weights loaded."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model.to(device)
    objective.to(device)
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    # Sparse embedding tables (nn.Embedding(sparse=True)) get SparseAdam: a step then touches only
    # the rows of the batch's tokens instead of the whole 30k-row WordPiece table (5x faster here).
    sparse = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    dense = [p for p in params if id(p) not in sparse]
    optimisers: list[torch.optim.Optimizer] = [torch.optim.AdamW(dense, lr=config.lr, weight_decay=config.weight_decay)]
    sparse_params = [p for p in params if id(p) in sparse]
    if sparse_params:
        optimisers.append(torch.optim.SparseAdam(sparse_params, lr=config.lr))
    lengths = np.array([len(x) for x in data.ids])
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = max(1, steps_per_epoch * config.epochs)
    warmup = int(config.warmup_ratio * total)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor) for o in optimisers]
    pruner = None
    if config.sparsity > 0:
        pruner = GradualPruner(
            model,
            config.sparsity,
            config.prune_structure,
            total,
            config.prune_start,
            config.prune_end,
            config.prune_every,
        )
    step = 0
    logits_t = torch.from_numpy(np.array(data.teacher_logits, dtype=np.float32))
    labels_t = torch.from_numpy(np.array(data.labels, dtype=np.int64))
    need_acts = objective.needs_activations and data.teacher_activations is not None
    need_derivs = bool(getattr(objective, "needs_derivatives", False))
    if need_derivs and (data.teacher_derivatives is None or data.derivative_lengths is None):
        raise ValueError(
            "derivative_weight > 0 needs a cache with the teacher's input derivatives (transfer.derivatives=true)"
        )
    captured = EmbeddingCapture(model) if need_derivs else None
    history = History()
    best_state: dict | None = None
    stale = 0
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        objective.train()
        running, seen = 0.0, 0
        batches = bucketed_batches(lengths, config.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress)
        for idx in bar:
            input_ids, mask = pad_batch([data.ids[i] for i in idx], pad_id, device)
            batch = {"teacher_logits": logits_t[idx].to(device), "labels": labels_t[idx].to(device)}
            if need_acts:
                batch["teacher_activations"] = _rows(data.teacher_activations, idx, device)  # type: ignore[arg-type]
            if need_derivs:
                batch |= derivative_targets(data, idx, input_ids.shape[1], device)
            with captured if captured is not None else contextlib.nullcontext():
                out: StudentOutput = model(input_ids, mask)
            if captured is not None:
                out.embedded = captured.output
            loss, _terms = objective(out, batch)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"loss became {float(loss)} at epoch {epoch + 1}, step {seen // config.batch_size}")
            for optimiser in optimisers:
                optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(dense, config.grad_clip)
            for optimiser, scheduler in zip(optimisers, schedulers, strict=True):
                optimiser.step()
                scheduler.step()
            step += 1
            if pruner is not None:
                pruner.step(step)
            running += loss.item() * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{running / seen:.4f}")
        record = {"epoch": epoch + 1, "train_loss": running / max(1, seen)}
        # While pruning has not reached its target, an epoch's model is not the model asked for:
        # it may neither be kept as the best nor count towards early stopping.
        eligible = pruner is None or pruner.reached_target()
        if pruner is not None:
            record["sparsity"] = pruner.current
        if evaluate is not None:
            model.eval()
            score = evaluate()
            record["dev_score"] = score
            if eligible and score > history.best_score:
                history.best_score, history.best_epoch, stale = score, epoch + 1, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            elif eligible:
                stale += 1
            history.epochs.append(record)
            if report is not None:
                report(epoch + 1, score)
            if stale >= config.patience:
                break
        else:
            history.epochs.append(record)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if pruner is not None:
        history.sparsity = zero_fraction(model)
        history.kept_units = pruner.kept_units()
    history.seconds = time.perf_counter() - started
    return history


def suggest_loop(trial: Any, batch_sizes: Sequence[int], max_dropout: float = 0.5) -> dict[str, Any]:
    """The training-loop part of a neural student's search space (learning rate, batch size, dropout)."""
    return {
        "dropout": trial.suggest_float("dropout", 0.0, max_dropout),
        "lr": trial.suggest_float("lr", 3e-4, 5e-3, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(batch_sizes)),
    }
