"""Lean inference exports: int8 students, the folded BiLSTM, the reachable-vocabulary table, the fast featuriser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from students.base import DevSet, Student
from students.export import FoldedBiLSTM, file_bytes, load_predictor, reachable_ids
from students.featurizer import FeaturizerConfig, NgramFeaturizer
from students.registry import build_student
from transfer.cache import TransferCache

EXTRA = [
    "A wholly UNSEEN sentence, with Ünïcode and   odd  spacing!",
    "x",
    "",
    "the the the film film was great great great and not dull at all, was it? no, it wasn't.",
]


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean())


@pytest.fixture(scope="module", params=["max", "mean", "last"])
def bilstm(request: pytest.FixtureRequest, tiny_cache: TransferCache, tiny_task) -> Student:
    student = build_student(
        "bilstm", hidden_size=8, mlp_dim=8, epochs=1, batch_size=32, max_length=32, pooling=request.param
    ).with_runtime("cpu")
    return student.fit(tiny_cache, DevSet(tiny_task.dev, accuracy))


def texts_of(cache: TransferCache) -> list[str]:
    return [*cache.dev_texts, *cache.texts[:30], *EXTRA]


def test_folded_bilstm_equals_the_student(bilstm: Student, tiny_cache: TransferCache, tmp_path: Path) -> None:
    texts = texts_of(tiny_cache)
    folded = FoldedBiLSTM.from_student(bilstm)
    assert [list(x) for x in folded.encode(texts)] == [list(x) for x in bilstm.encode(texts)]  # same tokeniser ids
    expected = bilstm.predict_logits(texts)
    np.testing.assert_allclose(folded.predict_logits(texts), expected, rtol=1e-4, atol=1e-5)
    for text in texts[:5]:  # batch 1 (no padding) takes the unmasked path
        np.testing.assert_allclose(folded.predict_logits([text]), bilstm.predict_logits([text]), rtol=1e-4, atol=1e-5)
    loaded = load_predictor(folded.save(tmp_path / "folded"))
    assert isinstance(loaded, FoldedBiLSTM)
    np.testing.assert_array_equal(loaded.predict_logits(texts), folded.predict_logits(texts))
    half = FoldedBiLSTM.from_student(bilstm, dtype="float16")
    np.testing.assert_allclose(half.predict_logits(texts), expected, atol=2e-2)


def test_pruned_vocabulary_keeps_what_the_student_can_meet(bilstm: Student, tiny_cache: TransferCache, tmp_path: Path):
    met = tiny_cache.texts[:5]  # the tiny teacher's vocabulary is its whole training set: prune to fewer texts
    keep = reachable_ids(bilstm.tokenizer, met, int(bilstm.hparams["max_length"]))
    tok = bilstm.tokenizer
    assert {tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} <= set(keep.tolist())
    full = FoldedBiLSTM.from_student(bilstm)
    pruned = FoldedBiLSTM.from_student(bilstm, keep_ids=keep)
    assert pruned.table.shape[0] == len(keep) < full.table.shape[0]
    np.testing.assert_allclose(pruned.predict_logits(met), full.predict_logits(met), atol=1e-6)
    # a token outside the kept rows reads the [UNK] row
    unseen = [i for i in range(len(tok)) if i not in set(keep.tolist())]
    assert unseen and all(pruned.row_of[i] == pruned.row_of[tok.unk_token_id] for i in unseen)
    np.testing.assert_array_equal(pruned.table[pruned.row_of[keep]], full.table[keep])
    assert file_bytes(pruned.save(tmp_path / "p")) < file_bytes(full.save(tmp_path / "f"))


def test_folding_refuses_what_it_cannot_fold(tiny_cache: TransferCache, tiny_task) -> None:
    cnn = build_student("cnn", n_filters=4, mlp_dim=8, epochs=1, max_length=32, widths="2,3").with_runtime("cpu")
    cnn.fit(tiny_cache)
    with pytest.raises(ValueError, match="only a fitted bilstm"):
        FoldedBiLSTM.from_student(cnn)
    deep = build_student("bilstm", hidden_size=4, mlp_dim=4, num_layers=2, epochs=1, max_length=32)
    deep.with_runtime("cpu").fit(tiny_cache)
    with pytest.raises(ValueError, match="num_layers=1"):
        FoldedBiLSTM.from_student(deep)


def test_int8_student_predicts_close_and_round_trips(bilstm: Student, tiny_cache: TransferCache, tmp_path: Path):
    texts = texts_of(tiny_cache)
    q = bilstm.quantized()
    assert q.int8 and not bilstm.int8  # the original is untouched
    expected = bilstm.predict_logits(texts)
    got = q.predict_logits(texts)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9
    np.testing.assert_allclose(got, expected, atol=0.1)
    loaded = Student.load(q.save(tmp_path / "q"))
    assert loaded.int8
    np.testing.assert_array_equal(loaded.predict_logits(texts), got)


def test_fast_featuriser_equals_scikit_learn(tiny_cache: TransferCache) -> None:
    texts = texts_of(tiny_cache)
    for config in (
        FeaturizerConfig(word_max_features=200, char_max_features=300, min_df=1),
        FeaturizerConfig(word_max_features=200, char_max_features=0, word_ngram_max=1, sublinear_tf=False),
        FeaturizerConfig(word_max_features=0, char_max_features=100, char_ngram_min=1, char_ngram_max=5),
    ):
        featurizer = NgramFeaturizer(config).fit(tiny_cache.texts)
        fast, reference = featurizer.transform(texts), featurizer.sklearn_transform(texts)
        assert fast.shape == reference.shape and fast.dtype == reference.dtype == np.float32
        np.testing.assert_array_equal(fast.indptr, reference.indptr)
        np.testing.assert_array_equal(fast.indices, reference.indices)
        np.testing.assert_array_equal(fast.data, reference.data)  # bit for bit
        one = featurizer.transform(texts[:1])
        np.testing.assert_array_equal(one.toarray(), reference[:1].toarray())


def test_a_bilstm_serves_folded_and_a_cnn_as_its_module(bilstm: Student, tiny_cache: TransferCache) -> None:
    """What latency is timed on (``studies.measure``): the folded BiLSTM on CPU, with the module's logits."""
    texts = texts_of(tiny_cache)
    form, serving = bilstm.serving_predictor()
    assert form == "folded"
    np.testing.assert_allclose(serving(texts), bilstm.predict_logits(texts), rtol=1e-4, atol=1e-5)
    assert bilstm.quantized().serving_predictor()[0] == "module"  # int8 weights: nothing to fold
    cnn = build_student("cnn", n_filters=4, mlp_dim=8, epochs=1, max_length=32, widths="2,3").with_runtime("cpu")
    cnn.fit(tiny_cache)
    assert cnn.serving_predictor()[0] == "module"
