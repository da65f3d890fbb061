"""Distillation with pruning: Zhu & Gupta's schedule, masks, physical removal of units, sparse storage."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from students.base import DevSet, Student
from students.pruning import GradualPruner, cubic_sparsity, pack_sparse, remove_pruned, unpack_sparse, zero_fraction
from students.registry import build_student
from transfer.batching import pad_batch

FAST = {"epochs": 2, "batch_size": 32, "max_length": 32}
PRUNABLE: dict[str, dict[str, Any]] = {
    "bilstm": {"hidden_size": 16, "mlp_dim": 16, "num_layers": 2},
    "cnn": {"n_filters": 8, "mlp_dim": 16, "widths": "2,3"},
    "bert": {"init": "random", "num_layers": 2, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64},
}


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean())


def test_cubic_schedule_starts_at_zero_and_reaches_the_target() -> None:
    values = [cubic_sparsity(t, 100, 0.8, start=0.1, end=0.6) for t in range(101)]
    assert values[0] == 0.0 and values[10] == 0.0
    assert values[60] == pytest.approx(0.8) and values[100] == pytest.approx(0.8)
    assert all(b >= a for a, b in itertools.pairwise(values))  # never un-prunes
    # cubic: half-way through the ramp, 1 - (1/2)^3 = 7/8 of the target
    assert cubic_sparsity(35, 100, 0.8, start=0.1, end=0.6) == pytest.approx(0.8 * 7 / 8)


def _logits(student: Student, texts: list[str]) -> np.ndarray:
    return student.predict_logits(texts)


@pytest.mark.parametrize("name", sorted(PRUNABLE))
def test_structured_removal_keeps_predictions_and_drops_parameters(name: str, tiny_cache, tiny_task) -> None:
    """Masked (zeroed units) and removed (smaller module) compute the same logits; the removed one is smaller."""
    student = build_student(name, **{**FAST, **PRUNABLE[name], "epochs": 1}).fit(tiny_cache)
    module = student.module
    assert module is not None
    texts = tiny_task.dev.texts
    pruner = GradualPruner(module, 0.5, "structured", total_steps=1)
    pruner.set_sparsity(0.5)
    masked = _logits(student, texts)
    before = student.n_params()
    kept = pruner.kept_units()
    assert kept and all(0 < len(k) < len(p) for k, p in zip(kept.values(), pruner.pruned.values(), strict=True))
    remove_pruned(module, kept)
    after = student.n_params()
    assert after.total < before.total and after.non_embedding < before.non_embedding
    np.testing.assert_allclose(_logits(student, texts), masked, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRUNABLE))
def test_pruning_during_fit_reaches_target_and_saves_a_smaller_model(
    name: str, tiny_cache, tiny_task, tmp_path: Path
) -> None:
    dense = build_student(name, **{**FAST, **PRUNABLE[name]}).fit(tiny_cache, DevSet(tiny_task.dev, accuracy))
    pruned = build_student(name, **{**FAST, **PRUNABLE[name], "sparsity": 0.5}).fit(
        tiny_cache, DevSet(tiny_task.dev, accuracy)
    )
    assert pruned.history is not None and pruned.history.epochs[-1]["sparsity"] == pytest.approx(0.5)
    assert pruned.fit_metrics()["sparsity"] > 0.2
    assert pruned.n_params().non_embedding < 0.75 * dense.n_params().non_embedding
    # a structurally pruned model is smaller on disk and loads with its new shapes
    dense_file = dense.save(tmp_path / "dense") / "model.pt"
    pruned_dir = pruned.save(tmp_path / "pruned")
    assert (pruned_dir / "model.pt").stat().st_size < dense_file.stat().st_size
    loaded = Student.load(pruned_dir)
    np.testing.assert_allclose(loaded.predict_logits(tiny_task.dev.texts), pruned.predict_logits(tiny_task.dev.texts))
    assert loaded.n_params() == pruned.n_params()


def test_unstructured_pruning_reaches_target_per_matrix_and_is_stored_sparse(
    tiny_cache, tiny_task, tmp_path: Path
) -> None:
    hp = {**FAST, **PRUNABLE["bilstm"], "embedding_init": "random", "embedding_dim": 16}
    student = build_student("bilstm", **hp, sparsity=0.8, prune_structure="unstructured").fit(
        tiny_cache, DevSet(tiny_task.dev, accuracy)
    )
    module = student.module
    assert module is not None
    for p in [module.lstm.weight_hh_l0, module.head[0].weight]:
        assert float((p == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert zero_fraction(module) > 0.6
    dense = build_student("bilstm", **hp).fit(tiny_cache)
    assert (student.save(tmp_path / "s") / "model.pt").stat().st_size < (
        dense.save(tmp_path / "d") / "model.pt"
    ).stat().st_size
    loaded = Student.load(tmp_path / "s")
    np.testing.assert_allclose(loaded.predict_logits(tiny_task.dev.texts), student.predict_logits(tiny_task.dev.texts))


def test_sparse_packing_round_trips_exactly() -> None:
    dense = torch.randn(6, 5)
    sparse = dense * (torch.rand(6, 5) > 0.8)
    conv = torch.randn(4, 3, 2) * (torch.rand(4, 3, 2) > 0.9)
    packed = pack_sparse({"a": dense, "b": sparse, "c": conv, "bias": torch.zeros(5)})
    assert "a" in packed and "b::csr" in packed and "c::csr" in packed
    out = unpack_sparse(packed)
    for name, value in {"a": dense, "b": sparse, "c": conv}.items():
        assert torch.equal(out[name], value)


def test_masked_units_stay_pruned_while_training(tiny_cache) -> None:
    """After every optimiser step the pruned units are zeroed again, and the schedule never revives one."""
    student = build_student("cnn", **{**FAST, **PRUNABLE["cnn"], "epochs": 1}).fit(tiny_cache)
    module = student.module
    assert module is not None
    pruner = GradualPruner(module, 0.5, "structured", total_steps=10, end=0.5, every=1)
    pruner.step(3)
    first = {k: v.clone() for k, v in pruner.pruned.items()}
    with torch.no_grad():
        for conv in module.convs:
            conv.weight.add_(1.0)  # an optimiser step would move the zeroed weights
    pruner.step(5)
    for name, mask in first.items():
        assert bool(pruner.pruned[name][mask].all())
    ids, mask = pad_batch([np.arange(5, 12)], 0, torch.device("cpu"))
    assert torch.isfinite(module(ids, mask).logits).all()
    for w, conv in zip(module.widths, module.convs, strict=True):
        assert float(conv.weight[pruner.pruned[f"conv{w}"]].abs().sum()) == 0.0


def test_bad_pruning_settings_are_refused(tiny_cache) -> None:
    with pytest.raises(ValueError, match="prune_structure"):
        build_student("cnn", **FAST, sparsity=0.5, prune_structure="rows").fit(tiny_cache)
    with pytest.raises(ValueError, match="sparsity"):
        build_student("cnn", **FAST, sparsity=1.0).fit(tiny_cache)
