"""Probing: deterministic, well-formed generated tasks; a probe that tells signal from noise; the CLI end to end."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from studies.config import compose
from studies.probe import probe, probe_accuracy
from studies.probing_tasks import (
    ProbingTask,
    bigram_shift,
    generate_tasks,
    is_negation,
    negation,
    odd_man_out,
    pick_content_words,
    sentence_length,
    source_sentences,
    word_content,
)
from studies.run import run_study

WORDS = [f"w{i}" for i in range(300)]


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Sentences of 3..30 tokens over a Zipf-ish vocabulary, some with a negation."""
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    out = []
    for i in range(n):
        words = rng.choices(WORDS, weights, k=rng.randint(3, 30))
        if i % 4 == 0:
            words.insert(rng.randrange(len(words)), rng.choice(["not", "never", "isn't"]))
        out.append(" ".join(words))
    return out


def by_name(tasks: list[ProbingTask]) -> dict[str, ProbingTask]:
    return {t.name: t for t in tasks}


def test_generation_is_deterministic_in_the_seed() -> None:
    texts = corpus()
    first, _ = generate_tasks(texts, seed=3, max_sentences=400)
    again, _ = generate_tasks(list(texts), seed=3, max_sentences=400)
    other, _ = generate_tasks(texts, seed=4, max_sentences=400)
    assert [t.name for t in first] == ["sentence_length", "word_content", "bigram_shift", "odd_man_out", "negation"]
    for a, b, c in zip(first, again, other, strict=True):
        assert a.texts == b.texts and np.array_equal(a.labels, b.labels) and a.classes == b.classes
        assert a.texts != c.texts or not np.array_equal(a.labels, c.labels), a.name
    assert all(len(t) <= 400 for t in first)


def test_source_sentences_are_capped_distinct_and_normalised() -> None:
    picked = source_sentences(["a  b", "a b", "c d e", "single", "f g"], max_sentences=2, seed=0)
    assert len(picked) == 2 and len(set(picked)) == 2
    assert all("  " not in s and len(s.split()) >= 2 for s in picked)


def test_bigram_shift_swaps_two_adjacent_tokens() -> None:
    sentences = source_sentences(corpus(), None, seed=0)
    task = bigram_shift(sentences, np.random.default_rng(0))
    assert task is not None
    counts = Counter(task.labels.tolist())
    assert abs(counts[0] - counts[1]) <= 1
    originals = set(sentences)
    by_bag: dict[tuple[str, ...], list[list[str]]] = {}
    for s in sentences:
        by_bag.setdefault(tuple(sorted(s.split())), []).append(s.split())
    for text, label in zip(task.texts, task.labels, strict=True):
        if label == 0:
            assert text in originals
            continue
        words = text.split()
        assert text not in originals or len(by_bag[tuple(sorted(words))]) > 1

        def one_adjacent_swap(orig: list[str], words: list[str] = words) -> bool:
            diff = [i for i, (a, b) in enumerate(zip(orig, words, strict=True)) if a != b]
            return (
                len(diff) == 2
                and diff[1] == diff[0] + 1
                and (orig[diff[0]], orig[diff[1]]) == (words[diff[1]], words[diff[0]])
            )

        assert any(one_adjacent_swap(orig) for orig in by_bag[tuple(sorted(words))]), text


def test_length_bins_are_ordered_and_balanced_ish() -> None:
    sentences = source_sentences(corpus(1000), None, seed=0)
    task = sentence_length(sentences, np.random.default_rng(0))
    assert task is not None and len(task.classes) == 5
    lengths = np.array([len(t.split()) for t in task.texts])
    for b in range(len(task.classes) - 1):
        assert lengths[task.labels == b].max() < lengths[task.labels == b + 1].min()
    counts = np.bincount(task.labels)
    expected = len(task) / len(task.classes)
    assert counts.min() > 0.5 * expected and counts.max() < 1.6 * expected


def test_word_content_labels_name_the_only_chosen_word() -> None:
    sentences = source_sentences(corpus(), None, seed=0)
    task = word_content(sentences, np.random.default_rng(0), k=8)
    assert task is not None and 2 <= len(task.classes) <= 8
    assert set(task.classes) <= set(pick_content_words(sentences, 8))
    chosen = set(task.classes)
    for text, label in zip(task.texts, task.labels, strict=True):
        present = chosen & set(text.split())
        assert present == {task.classes[label]}, text
    df = Counter(w for s in sentences for w in set(s.split()))
    assert all(df[w] <= 0.1 * len(sentences) for w in task.classes)  # not the most frequent words


def test_odd_man_out_and_negation_labels() -> None:
    sentences = source_sentences(corpus(), None, seed=0)
    originals = set(sentences)
    somo = odd_man_out(sentences, np.random.default_rng(1))
    assert somo is not None
    for text, label in zip(somo.texts, somo.labels, strict=True):
        if label == 0:
            assert text in originals
        else:
            words = text.split()
            assert any(
                len(o.split()) == len(words) and sum(a != b for a, b in zip(o.split(), words, strict=True)) == 1
                for o in originals
            ), text
    neg = negation(sentences, np.random.default_rng(2))
    assert neg is not None
    assert Counter(neg.labels.tolist())[0] == Counter(neg.labels.tolist())[1]
    for text, label in zip(neg.texts, neg.labels, strict=True):
        assert any(is_negation(w) for w in text.split()) == bool(label)
    assert negation(["a b", "c d"] * 10, np.random.default_rng(0)) is None  # no negations at all: skipped


def test_probe_is_at_chance_on_noise_and_above_on_signal() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=800)
    noise = probe_accuracy(rng.normal(size=(800, 16)), labels, seed=0)
    assert abs(noise.accuracy - 0.25) < 0.1
    assert noise.n_train + noise.n_test == 800
    signal = np.eye(4)[labels] + rng.normal(scale=0.5, size=(800, 4))
    informative = probe_accuracy(np.hstack([signal, rng.normal(size=(800, 12))]), labels, seed=0)
    assert informative.accuracy > 0.85
    assert informative.accuracy > noise.accuracy + 0.4


def test_probe_cli_on_a_tiny_study(make_tiny_overrides, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = [
        *make_tiny_overrides(tmp_path),
        "student.hparams.hidden_size=16",
        "student.hparams.mlp_dim=16",
        "tracking.latency_samples=3",
        f"probe.out_dir={tmp_path / 'reports'}",
    ]
    run_study(compose([*overrides, "student=bilstm", "study.n_trials=1"]))
    result = probe(compose(overrides))
    names = [t.name for t in result.tasks]
    assert {"sentence_length", "word_content", "bigram_shift", "odd_man_out"} <= set(names)
    assert result.models == ["teacher L0", "teacher L1", "teacher L2", "bilstm"]  # tiny teacher: 2 layers
    assert result.accuracy.shape == (len(names), 4)
    assert np.isfinite(result.accuracy).all() and (result.accuracy >= 0).all() and (result.accuracy <= 1).all()
    assert any("bilstm: trial model" in n for n in result.notes)  # the study's logged model, not a retrain
    assert any("not probed: no study" in n for n in result.notes)
    for path in result.files.values():
        assert path.is_file() and path.stat().st_size > 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.data.tags["role"] == "probe"
    assert {"probe.md", "probe.csv", "probe_heatmap.png"} <= {a.path for a in client.list_artifacts(result.run_id)}
