"""Derivative matching: cached teacher derivatives, the cache extension, and the student's derivative term."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from students.objectives import DistillationObjective, ObjectiveConfig
from students.registry import build_student
from students.training import EmbeddingCapture, TrainingData, derivative_targets
from transfer.batching import pad_batch
from transfer.cache import STATS, TransferCache, cache_key, get_or_build_cache
from transfer.derivatives import aligned_lengths, gradient_times_input
from transfer.errors import KDError
from transfer.fingerprint import hash_json
from transfer.transfer_set import make_transfer_set

FAST = {"epochs": 1, "batch_size": 32, "max_length": 32}


@pytest.fixture(scope="module")
def derivative_cache(tiny_teacher, tiny_task, tiny_cache, tmp_path_factory: pytest.TempPathFactory) -> TransferCache:
    """The tiny cache extended with derivatives (its own root: the shared cache is copied, not touched)."""
    root = tmp_path_factory.mktemp("derivative_transfer")
    shutil.copytree(tiny_cache.path, root / tiny_cache.path.name)
    return get_or_build_cache(tiny_teacher, make_transfer_set(tiny_task), root, derivatives=True)


def fresh_derivatives(teacher, text: str) -> np.ndarray:
    """Gradient × input of one text, alone (no padding), by autograd on the teacher: [T, C]."""
    enc = teacher.tokenizer([text], truncation=True, max_length=teacher.max_length, return_tensors="pt")
    x = teacher.model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
    logits = teacher.model(inputs_embeds=x, attention_mask=enc["attention_mask"]).logits
    return gradient_times_input(logits, x)[0].detach().numpy()


def test_key_without_derivatives_is_unchanged(tiny_teacher, tiny_task) -> None:
    transfer = make_transfer_set(tiny_task)
    old = hash_json({"format": 2, "labeler": tiny_teacher.fingerprint, "data": transfer.fingerprint()})
    assert cache_key(tiny_teacher.fingerprint, transfer) == old
    assert cache_key(tiny_teacher.fingerprint, transfer, derivatives=True) != old


def test_cached_derivatives_equal_a_fresh_autograd_computation(derivative_cache, tiny_teacher, tiny_cache) -> None:
    derivs = derivative_cache.derivatives
    assert derivs is not None and derivs.dtype == np.float16
    assert derivs.shape == (len(tiny_cache), tiny_teacher.max_length, tiny_cache.num_labels)
    assert derivative_cache.dev_derivatives is not None and derivative_cache.test_derivatives is not None
    for i in range(0, len(derivative_cache), 17):
        fresh = fresh_derivatives(tiny_teacher, derivative_cache.texts[i])
        n = len(fresh)
        scale = float(np.abs(fresh).max())
        assert scale > 1e-6  # a real signal, not zeros matching zeros
        # within float16's precision of the text's own scale (an absolute tolerance would pass anything small)
        np.testing.assert_allclose(derivs[i, :n].astype(np.float32), fresh, rtol=2e-2, atol=2e-3 * scale)
        assert not np.any(derivs[i, n:])  # zero past the text's end


def test_existing_cache_is_extended_not_relabelled(derivative_cache, tiny_cache) -> None:
    info = derivative_cache.derivative_info
    assert info is not None and info["extended_from"] == tiny_cache.key
    for name in ("train_logits", "train_activations", "dev_logits", "train_labels"):
        old, new = tiny_cache.path / f"{name}.npy", derivative_cache.path / f"{name}.npy"
        assert new.read_bytes() == old.read_bytes()
    assert "train_derivatives" in derivative_cache.manifest["shapes"]


def test_fresh_build_with_derivatives_matches_the_extension(
    derivative_cache, tiny_teacher, tiny_task, tmp_path: Path
) -> None:
    passes = STATS.passes
    fresh = get_or_build_cache(tiny_teacher, make_transfer_set(tiny_task), tmp_path, derivatives=True)
    assert STATS.passes == passes + 1 and fresh.key == derivative_cache.key
    assert fresh.derivative_info is not None and fresh.derivative_info["extended_from"] is None
    np.testing.assert_array_equal(np.asarray(fresh.logits), np.asarray(derivative_cache.logits))
    np.testing.assert_allclose(
        np.asarray(fresh.derivatives, dtype=np.float32), np.asarray(derivative_cache.derivatives, dtype=np.float32),
        atol=2e-3,
    )  # fmt: skip


def derivative_term(student, cache: TransferCache, n: int = 24) -> float:
    """The derivative term of ``student`` on the first ``n`` training texts (weight 1, evaluation mode)."""
    module = student.module
    module.eval()
    ids = student.encode(cache.texts[:n])
    width = cache.derivative_info["max_length"]
    teacher_ids = student.tokenizer(list(cache.texts[:n]), truncation=True, max_length=width)
    data = TrainingData(
        ids, np.asarray(cache.logits[:n]), cache.labels[:n], None,
        np.asarray(cache.derivatives[:n]), aligned_lengths(ids, [np.asarray(x) for x in teacher_ids["input_ids"]]),
    )  # fmt: skip
    idx = np.arange(n)
    input_ids, mask = pad_batch(ids, student.pad_id, torch.device("cpu"))
    batch = {"teacher_logits": torch.from_numpy(data.teacher_logits).float(), "labels": torch.from_numpy(data.labels)}
    batch |= derivative_targets(data, idx, input_ids.shape[1], torch.device("cpu"))
    objective = DistillationObjective(ObjectiveConfig(kd_weight=0.0, derivative_weight=1.0), module.sentence_dim, None)
    with EmbeddingCapture(module) as capture:
        out = module(input_ids, mask)
    out.embedded = capture.output
    _, terms = objective(out, batch)
    return terms["derivative"]


def test_derivative_term_is_zero_for_the_teacher_and_positive_otherwise(derivative_cache, tiny_task) -> None:
    # The BERT student initialised from every teacher block, without dropout, is the teacher.
    same = build_student(
        "bert", **{**FAST, "epochs": 0}, init="teacher", num_layers=2, layer_map="first", pooling="cls", dropout=0.0
    ).fit(derivative_cache)
    np.testing.assert_allclose(
        same.predict_logits(tiny_task.dev.texts), np.asarray(derivative_cache.dev_logits, dtype=np.float32), atol=1e-2
    )
    other = build_student("bilstm", **{**FAST, "epochs": 0}, hidden_size=16, mlp_dim=16).fit(derivative_cache)
    zero, positive = derivative_term(same, derivative_cache), derivative_term(other, derivative_cache)
    assert zero < 1e-9  # float16 rounding of the cached values only (≈ 1e-12 here)
    assert positive > 1e-7 and positive > 1e4 * zero  # an untrained BiLSTM: ≈ 2e-5 here


def test_derivative_loss_is_exactly_zero_against_its_own_derivatives() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4, requires_grad=True)
    layer = torch.nn.Linear(4, 2)
    logits = torch.tanh(layer(x)).sum(1)
    mine = gradient_times_input(logits, x, create_graph=True)
    from transfer.derivatives import derivative_loss

    mask = torch.ones(3, 5, dtype=torch.bool)
    assert float(derivative_loss(mine, mine.detach(), mask)) == 0.0
    loss = derivative_loss(mine, torch.zeros_like(mine), mask)
    loss.backward()  # double backward reaches the parameters
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("name", "hparams"),
    [
        ("bilstm", {"hidden_size": 16, "mlp_dim": 16}),
        ("cnn", {"n_filters": 8, "mlp_dim": 16, "widths": "2,3"}),
        ("bert", {"init": "random", "num_layers": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64}),
    ],
)
def test_every_neural_student_trains_with_derivative_matching(name, hparams, derivative_cache, tiny_task) -> None:
    student = build_student(name, **FAST, **hparams, derivative_weight=1.0).fit(derivative_cache)
    assert np.isfinite(student.predict_logits(tiny_task.dev.texts)).all()


def test_derivative_matching_without_cached_derivatives_is_refused(tiny_cache) -> None:
    with pytest.raises(KDError, match=r"transfer\.derivatives=true"):
        build_student("cnn", **FAST, n_filters=4, derivative_weight=1.0).fit(tiny_cache)


def test_student_with_another_vocabulary_is_refused(derivative_cache, tmp_path: Path) -> None:
    copy = tmp_path / derivative_cache.path.name
    shutil.copytree(derivative_cache.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["derivatives"]["vocabulary"] = "another-vocab"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(KDError, match="token by token"):
        build_student("cnn", **FAST, n_filters=4, derivative_weight=1.0).fit(TransferCache(copy))


def test_alignment_stops_at_the_first_differing_token() -> None:
    student = [np.array([101, 5, 6, 102]), np.array([101, 5, 6, 7, 8, 102])]
    teacher = [np.array([101, 5, 6, 102]), np.array([101, 5, 6, 102])]  # the teacher truncated the second text
    assert aligned_lengths(student, teacher).tolist() == [4, 3]


def test_chain_assistant_labels_derivatives_for_the_next_link(derivative_cache, tiny_task) -> None:
    chain = build_student(
        "chain",
        links=["bilstm", "cnn"],
        link0={**FAST, "hidden_size": 16, "mlp_dim": 16, "derivative_weight": 1.0},
        link1={**FAST, "n_filters": 4, "derivative_weight": 1.0},
    ).fit(derivative_cache)
    produced = TransferCache(derivative_cache.path.parent / chain.cache_keys[1])
    assert produced.derivatives is not None and produced.derivative_info["max_length"] == FAST["max_length"]
    assert np.abs(np.asarray(produced.derivatives, dtype=np.float32)).max() > 0
    assert np.isfinite(chain.predict_logits(tiny_task.dev.texts)).all()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("study.search_objectives=[derivative]", r"add transfer\.derivatives=true"),
        ("student.hparams.derivative_weight=1.0", r"add transfer\.derivatives=true"),
        ("student.hparams.sparsity=1.5", r"sparsity=1\.5: expected a number in \[0, 1\)"),
        ("student.hparams.prune_structure=rows", "expected structured or unstructured"),
    ],
)
def test_derivative_and_pruning_settings_are_checked_before_any_work(
    override: str, expected: str, tiny_overrides: list[str], tmp_path: Path
) -> None:
    from studies.config import compose
    from studies.run import run_study

    with pytest.raises(KDError, match=expected):
        run_study(compose([*tiny_overrides, override]))
    assert not (tmp_path / "cache").exists()
