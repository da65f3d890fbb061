"""The one text featuriser of the decision-forest students: word and character n-gram TF-IDF.

Trees cannot read token ids, so every forest student sees the same sparse bag of n-grams:
word 1-2 grams (what a sentence says) and ``char_wb`` 2-4 grams (morphology, typos, "n't").
Both are fitted on the transfer-set texts only. Feature names are prefixed ("w:great",
"c:gre") so explanations and tree rules read as real n-grams; a space inside a character
n-gram (a word boundary) is shown as "␣".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from transfer.settings import FromMapping

# Words with inner apostrophes ("don't", "n't", "'s") and single punctuation marks ("!", "?")
# stay tokens: both carry sentiment/grammaticality signal that sklearn's default pattern drops.
WORD_PATTERN = r"(?u)\w+(?:'\w+)?|'\w+|[^\w\s]"


@dataclass
class FeaturizerConfig(FromMapping):
    """Hyper-parameters of the featuriser; a ``*_max_features`` of 0 turns that part off."""

    word_max_features: int = 10000
    word_ngram_max: int = 2
    char_max_features: int = 5000
    char_ngram_min: int = 2
    char_ngram_max: int = 4
    min_df: int = 2
    sublinear_tf: bool = True

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {f.name: getattr(cls(), f.name) for f in fields(cls)}


class FastTfidf:
    """One fitted ``TfidfVectorizer``'s ``transform`` without scikit-learn's per-call pipeline.

    The same analyser (lower-casing, tokenising, n-grams) and the same float32 arithmetic in the
    same order (counts → 1 + log → × idf → row L2 norm summed in double, as scikit-learn's
    Cython does), so the features are equal to the vectoriser's; only the input validation,
    sparse-matrix round trips and estimator checks around them are gone (~1 ms → tens of µs a
    sentence).
    """

    def __init__(self, vectorizer: TfidfVectorizer) -> None:
        self.analyze = vectorizer.build_analyzer()
        self.vocabulary: dict[str, int] = dict(vectorizer.vocabulary_)
        self.sublinear = bool(vectorizer.sublinear_tf)
        self.idf = np.asarray(vectorizer.idf_) if vectorizer.use_idf else None
        self.l2 = vectorizer.norm == "l2"
        if vectorizer.norm not in ("l2", None):
            raise ValueError(f"the fast featuriser supports norm='l2' or None, not {vectorizer.norm!r}")

    def transform(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data float32, column indices int32, row pointers) of the TF-IDF rows, columns sorted per row."""
        vocabulary, values, columns, indptr = self.vocabulary, [], [], [0]
        for text in texts:
            counts: dict[int, int] = {}
            for gram in self.analyze(text):
                column = vocabulary.get(gram)
                if column is not None:
                    counts[column] = counts.get(column, 0) + 1
            for column in sorted(counts):
                columns.append(column)
                values.append(counts[column])
            indptr.append(len(columns))
        data = np.asarray(values, dtype=np.float32)
        index = np.asarray(columns, dtype=np.int32)
        if self.sublinear:
            np.log(data, data)
            data += 1.0
        if self.idf is not None:
            data *= self.idf[index]
        if self.l2:
            squares = (data * data).tolist()
            for start, end in itertools.pairwise(indptr):
                total = 0.0
                for value in squares[start:end]:  # in order, in double: scikit-learn's own sum
                    total += value
                if total:
                    data[start:end] = data[start:end].astype(np.float64) / math.sqrt(total)
        return data, index, np.asarray(indptr, dtype=np.int32)


class NgramFeaturizer:
    """Word + character TF-IDF, hstacked into one float32 CSR matrix (word columns first)."""

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config or FeaturizerConfig()
        self.parts: list[tuple[str, TfidfVectorizer]] = []
        self._fast: list[FastTfidf] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Saved students stay as before: the fast path is rebuilt from the vectorisers on first use."""
        return {k: v for k, v in self.__dict__.items() if k != "_fast"}

    def _vectorizers(self, min_df: int) -> list[tuple[str, TfidfVectorizer]]:
        c = self.config
        common: dict[str, Any] = {"min_df": min_df, "sublinear_tf": c.sublinear_tf, "dtype": np.float32}
        parts = []
        if c.word_max_features > 0:
            word = TfidfVectorizer(
                token_pattern=WORD_PATTERN,
                ngram_range=(1, c.word_ngram_max),
                max_features=c.word_max_features,
                **common,
            )
            parts.append(("w", word))
        if c.char_max_features > 0:
            char = TfidfVectorizer(
                analyzer="char_wb",
                ngram_range=(c.char_ngram_min, c.char_ngram_max),
                max_features=c.char_max_features,
                **common,
            )
            parts.append(("c", char))
        if not parts:
            raise ValueError("the featuriser needs word_max_features > 0 or char_max_features > 0")
        return parts

    def fit_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """Fit the vocabularies and IDF weights and featurise ``texts`` in one pass over them.

        A tiny corpus where ``min_df`` prunes every n-gram falls back to min_df=1 rather than fail.
        """
        texts = list(texts)
        try:
            return self._fit_transform(texts, self.config.min_df)
        except ValueError:  # "After pruning, no terms remain"
            if self.config.min_df <= 1:
                raise
            return self._fit_transform(texts, 1)

    def _fit_transform(self, texts: list[str], min_df: int) -> sp.csr_matrix:
        self.parts = self._vectorizers(min_df)
        self._fast = None
        return sp.hstack([vec.fit_transform(texts) for _, vec in self.parts], format="csr", dtype=np.float32)

    def fit(self, texts: Sequence[str]) -> NgramFeaturizer:
        self.fit_transform(texts)
        return self

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The features of ``texts``, equal to ``sklearn_transform``'s, at a fraction of the cost per call."""
        assert self.parts, "fit the featuriser first"
        if getattr(self, "_fast", None) is None:
            self._fast = [FastTfidf(vec) for _, vec in self.parts]
        texts = list(texts)
        blocks = [fast.transform(texts) for fast in self._fast]
        if len(blocks) == 1:
            data, index, indptr = blocks[0]
        else:  # hstack: per row, each part's columns after the previous parts' (shifted by their widths)
            offsets = np.cumsum([0] + [len(vec.vocabulary_) for _, vec in self.parts[:-1]])
            rows = np.concatenate([np.repeat(np.arange(len(texts)), np.diff(b[2])) for b in blocks])
            order = np.argsort(rows, kind="stable")
            data = np.concatenate([b[0] for b in blocks])[order]
            index = np.concatenate([b[1] + off for b, off in zip(blocks, offsets, strict=True)])[order]
            indptr = np.sum([b[2] for b in blocks], axis=0, dtype=np.int32)
        return sp.csr_matrix((data, index, indptr), shape=(len(texts), self.n_features))

    def sklearn_transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The vectorisers' own ``transform``, hstacked: the reference the fast path equals."""
        assert self.parts, "fit the featuriser first"
        texts = list(texts)
        return sp.hstack([vec.transform(texts) for _, vec in self.parts], format="csr", dtype=np.float32)

    def feature_names(self) -> list[str]:
        """Human-readable column names in matrix order: "w:not good", "c:␣go"."""
        return [
            f"{prefix}:{name.replace(' ', '␣') if prefix == 'c' else name}"
            for prefix, vec in self.parts
            for name in vec.get_feature_names_out()
        ]

    @property
    def n_features(self) -> int:
        return sum(len(vec.vocabulary_) for _, vec in self.parts)
