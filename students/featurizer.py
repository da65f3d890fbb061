"""The one text featuriser of the decision-forest students: word and character n-gram TF-IDF.

Trees cannot read token ids, so every forest student sees the same sparse bag of n-grams:
word 1-2 grams (what a sentence says) and ``char_wb`` 2-4 grams (morphology, typos, "n't").
Both are fitted on the transfer-set texts only. Feature names are prefixed ("w:great",
"c:gre") so explanations and tree rules read as real n-grams; a space inside a character
n-gram (a word boundary) is shown as "␣".
"""

from __future__ import annotations

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


class NgramFeaturizer:
    """Word + character TF-IDF, hstacked into one float32 CSR matrix (word columns first)."""

    def __init__(self, config: FeaturizerConfig | None = None) -> None:
        self.config = config or FeaturizerConfig()
        self.parts: list[tuple[str, TfidfVectorizer]] = []

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
        return sp.hstack([vec.fit_transform(texts) for _, vec in self.parts], format="csr", dtype=np.float32)

    def fit(self, texts: Sequence[str]) -> NgramFeaturizer:
        self.fit_transform(texts)
        return self

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
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
