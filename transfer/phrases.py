"""A leak-free dev split for treebank-style training sets (SST-2's train holds sentences *and* their phrases).

GLUE SST-2's ``train.tsv`` has every labelled phrase of the SST training sentences, while its
test (GLUE's dev) is whole, unseen sentences. A dev split drawn at random from train rows is
mostly short phrases whose containing sentence, and most of whose sub-phrases, the model trained
on: it scores a few points above test and does not track it, so choices made on it (the teacher's
epoch, a student's trial) are not choices about test-like text. This split holds out whole
sentences instead, and drops every train phrase that occurs *only* inside held-out sentences,
so dev relates to train exactly as test does: phrases shared with a kept sentence stay in train,
as they would in GLUE's own train/test split.

Texts are compared as whitespace-separated tokens; a phrase is a contiguous token span.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def token_spans(tokens: Sequence[str]) -> Iterator[str]:
    """Every contiguous token span of ``tokens``, joined by single spaces (the whole text included)."""
    n = len(tokens)
    for start in range(n):
        for stop in range(start + 1, n + 1):
            yield " ".join(tokens[start:stop])


def _spans_of(texts: Iterable[tuple[str, ...]]) -> set[str]:
    spans: set[str] = set()
    for tokens in texts:
        spans.update(token_spans(tokens))
    return spans


def sentence_rows(texts: Sequence[str]) -> list[int]:
    """Indices of the rows that are whole sentences: texts that are no span of another text.

    One index per distinct sentence (its first row); duplicates and phrases are left out. Longest
    first, so every phrase is tested against the spans of the sentences already found (a phrase
    inside a phrase is inside that phrase's sentence).
    """
    normal = [_tokens(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (-len(normal[i]), i))
    covered: set[str] = set()
    sentences: list[int] = []
    for i in order:
        if not normal[i] or " ".join(normal[i]) in covered:
            continue
        sentences.append(i)
        covered.update(token_spans(normal[i]))
    return sorted(sentences)


def sentence_dev_split(
    texts: Sequence[str],
    carve: Callable[[int, Sequence[object]], tuple[np.ndarray, np.ndarray]],
    labels: Sequence[object],
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, dev)`` row indices: dev = whole sentences chosen by ``carve``, train = what test-like data allows.

    ``carve(n, labels)`` splits ``n`` sentences into (kept, held-out) positions (the loaders'
    stratified, seeded carver). Train keeps every row that is a span of a kept sentence; rows that
    occur only inside held-out sentences (their phrases, and the sentences themselves) are dropped.
    """
    sentences = sentence_rows(texts)
    kept_pos, dev_pos = carve(len(sentences), [labels[i] for i in sentences])
    kept_spans = _spans_of(_tokens(texts[sentences[p]]) for p in kept_pos)
    train = [i for i, text in enumerate(texts) if " ".join(_tokens(text)) in kept_spans]
    dev = sorted(sentences[p] for p in dev_pos)
    return np.asarray(train, dtype=np.int64), np.asarray(dev, dtype=np.int64)
