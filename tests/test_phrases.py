"""The treebank dev split: dev is whole sentences, train keeps only what test-like data would share with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transfer.errors import KDError
from transfer.loaders import carve_dev_split
from transfer.phrases import sentence_dev_split, sentence_rows, token_spans
from transfer.tasks import load_task

# Two sentences with their phrases, as in SST-2's train.tsv; "a fine film" occurs in both.
ROWS = [
    ("a fine film , well acted", 1),
    ("a fine film", 1),
    ("well acted", 1),
    ("acted", 1),
    ("a fine film , badly cut", 0),
    ("badly cut", 0),
    ("badly", 0),
    ("a  fine film", 1),  # a duplicate, spaced differently
]
TEXTS = [t for t, _ in ROWS]
LABELS = [y for _, y in ROWS]


def hold_out_second(n: int, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """A carver that keeps the first sentence and holds out the second."""
    assert n == 2
    return np.array([0]), np.array([1])


def test_token_spans_are_every_contiguous_span() -> None:
    assert sorted(token_spans(["a", "b", "c"])) == sorted(["a", "b", "c", "a b", "b c", "a b c"])


def test_sentences_are_texts_no_other_text_contains() -> None:
    assert sentence_rows(TEXTS) == [0, 4]
    assert sentence_rows(["good", "good"]) == [0]  # a duplicate is one sentence
    assert sentence_rows(["it is good", "is good", "good it"]) == [0, 2]


def test_dev_is_held_out_sentences_and_train_drops_their_own_phrases() -> None:
    train, dev = sentence_dev_split(TEXTS, hold_out_second, LABELS)
    assert dev.tolist() == [4]
    kept = [TEXTS[i] for i in train]
    # the held-out sentence and the phrases found only inside it are gone ...
    assert not {"a fine film , badly cut", "badly cut", "badly"} & set(kept)
    # ... while a phrase it shares with a kept sentence stays, as in GLUE's own train/test split
    assert kept == ["a fine film , well acted", "a fine film", "well acted", "acted", "a  fine film"]
    assert not set(train.tolist()) & set(dev.tolist())


def test_on_a_flat_file_every_row_is_a_sentence_and_the_split_is_the_stratified_one() -> None:
    texts = [f"sentence number {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    train, dev = sentence_dev_split(texts, lambda n, y: carve_dev_split(n, labels=y), labels)
    expected_train, expected_dev = carve_dev_split(40, labels=labels)
    assert train.tolist() == expected_train.tolist() and dev.tolist() == expected_dev.tolist()


def write_sst2_rows(root: Path, rows: list[tuple[str, int]]) -> Path:
    folder = root / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{t} \t{y}\n" for t, y in rows))
    (folder / "dev.tsv").write_text("sentence\tlabel\nloved it \t1\nhated it \t0\n")
    return root


def test_sst2_dev_has_no_phrase_of_its_sentences_in_train(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        label = i % 2
        word = ("great", "dull")[1 - label]
        rows += [(f"film {i} is {word} indeed", label), (f"is {word} indeed", label), (f"film {i}", label)]
    task = load_task("sst2", str(write_sst2_rows(tmp_path, rows)))
    assert len(task.dev) == 3 and all(t.startswith("film") and t.endswith("indeed") for t in task.dev.texts)
    for sentence in task.dev.texts:
        own = {f"film {sentence.split()[1]}", sentence}
        assert not own & set(task.train.texts)
    assert "is great indeed" in task.train.texts  # shared with kept sentences


def test_sst2_with_fewer_than_two_sentences_names_the_file(tmp_path: Path) -> None:
    write_sst2_rows(tmp_path, [("a good film", 1), ("good film", 1), ("film", 0)])
    with pytest.raises(KDError, match=r"sst2/train.tsv: only 1 whole sentence"):
        load_task("sst2", str(tmp_path))
