"""The transfer set: the texts the teacher labels for the students.

The training split, then (optionally) synthetic sentences made from it (``transfer/augment.py``,
Tang et al. 2019), then (optionally) the sentences of an extra file. Augmented and extra texts
carry label -1: they have no gold label, the teacher's soft labels are the signal. Everything
that decides these texts goes into ``TransferSet.description``, hence into the cache key.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from transfer.augment import AugmentConfig, EmbeddingVocab, Tagger, augment_texts, read_extra, unique_new
from transfer.cache import TransferSet
from transfer.tasks import Task


def make_transfer_set(
    task: Task,
    augment: AugmentConfig | None = None,
    extra: str | None = None,
    vocab_source: EmbeddingVocab | Any | None = None,
    tagger: Tagger | str | None = "auto",
) -> TransferSet:
    """The training split (+ augmented + extra texts), plus the dev and test splits the cache also labels.

    ``vocab_source``: an ``EmbeddingVocab`` or a teacher (anything with ``tokenizer`` and
    ``model.get_input_embeddings()``) whose embeddings drive the POS-replacement fallback; it is
    only read when augmentation is on. ``tagger``: see ``transfer.augment.make_replacer``.
    """
    texts = list(task.train.texts)
    description: dict[str, Any] = {"source": "train"}
    added: list[str] = []
    # Added texts never repeat a training sentence, and never include a held-out (dev or test)
    # sentence: that would hand the student the teacher's soft label for an evaluation example.
    seen = set(texts) | set(task.dev.texts) | set(task.test.texts)
    if augment is not None and augment.enabled:
        vocab = vocab_source
        if vocab is not None and not isinstance(vocab, EmbeddingVocab):
            vocab = EmbeddingVocab.from_teacher(vocab)
        synthetic, replacement = augment_texts(texts, augment, vocab=vocab, tagger=tagger)
        synthetic = unique_new(synthetic, seen)
        added += synthetic
        description["source"] += "+augment"
        description["augment"] = {**augment.describe(), "replacement": replacement, "synthetic": len(synthetic)}
    if extra:
        extra_texts = read_extra(extra)
        new = unique_new(extra_texts.texts, seen)
        added += new
        description["source"] += "+extra"
        description["extra"] = {"sha256": extra_texts.sha256, "lines": len(extra_texts.texts), "added": len(new)}
    labels = np.concatenate([np.asarray(task.train.labels, dtype=np.int64), np.full(len(added), -1, dtype=np.int64)])
    return TransferSet(
        texts=texts + added,
        labels=labels,
        dev_texts=list(task.dev.texts),
        dev_labels=np.asarray(task.dev.labels, dtype=np.int64),
        test_texts=list(task.test.texts),
        test_labels=np.asarray(task.test.labels, dtype=np.int64),
        label_names=list(task.labels),
        task=task.name,
        description=description,
    )
