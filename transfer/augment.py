"""Transfer-set augmentation (Tang et al. 2019, "Distilling Task-Specific Knowledge from BERT into
Simple Neural Networks", §3.3), plus unlabelled sentences from an extra file.

A student learns more from the teacher when it sees more inputs than the labelled training
split; the teacher's soft labels are the only signal on these texts, so they get label -1.
For each training sentence the procedure below runs ``n`` times; each run gives one synthetic
sentence, and synthetic sentences equal to an original (or to an earlier synthetic one) are
dropped:

1. Split the sentence on whitespace into words. For each word draw ``x ~ U[0, 1)`` once:
   ``x < p_mask`` → replace the word by the teacher's mask token (default ``[MASK]``);
   ``p_mask <= x < p_mask + p_pos`` → POS-guided replacement (below). The two rules are mutually
   exclusive, as in the paper.
2. With probability ``p_ngram`` replace the result by one of its n-grams, ``n ~ U{1..ngram_max}``
   (capped at the sentence length), its start uniform.

POS-guided replacement samples a word of the same class from the corpus unigram distribution
re-normalised within the class (as in the paper), never the word itself (a word alone in its
class stays unchanged). The class comes from the first available of:

- ``pos-tagger``: a real tagger. NLTK's averaged perceptron (Penn tags) is used when ``nltk`` is
  importable *and* its ``taggers/averaged_perceptron_tagger_eng`` data is already present (we
  never download); each sentence is tagged in context; any ``words -> tags`` callable can be
  passed instead.
- ``embedding-neighbours``: when the teacher's word-embedding matrix and vocabulary are given
  (``EmbeddingVocab``; the pipeline passes the teacher), a corpus word that is a whole
  vocabulary entry (exactly or lower-cased; not a ``##`` piece, not a ``[SPECIAL]`` token) is
  replaced by one of its ``k = 10`` nearest neighbours, uniformly. Neighbours are by cosine
  similarity of the teacher's input embeddings, searched among the *corpus* words that are
  vocabulary entries of the same *shape* (punctuation / number / capitalised / lower-case) and
  not the same entry (case variants excluded). Words that are no whole vocabulary entry use the
  next fallback.
- ``frequency-suffix``: no tagger and no embeddings. A word's class is the triple
  (shape, suffix class, frequency-rank bucket): shape as above; suffix class = the longest of
  ``SUFFIXES`` the word ends with (alphabetic words at least 3 letters longer than the suffix;
  ``-tion``/``-sion`` both count as ``-ion``, ``-able``/``-ible`` as ``-ble``, a final ``-s``
  only if not ``-ss``), else none; bucket = ``floor(log2(rank + 1))`` where ``rank`` is the
  word's 0-based rank by corpus count (ties broken alphabetically). Frequent function words thus
  swap among themselves, rare content words among rare words with the same ending: a crude,
  dependency-free proxy for the part of speech.

Everything is deterministic for a seed: each sentence draws from its own generator seeded by
``(seed, sentence)``, so a sentence's synthetic examples do not depend on its position.
"""

from __future__ import annotations

import bisect
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transfer.errors import KDError
from transfer.fingerprint import hash_file

Tagger = Callable[[list[str]], list[str]]
NEIGHBOURS = 10  # k of the embedding-neighbour fallback
SUFFIXES: tuple[tuple[str, str], ...] = (  # (ending, class), longest first
    ("ment", "ment"),
    ("ness", "ness"),
    ("tion", "ion"),
    ("sion", "ion"),
    ("able", "ble"),
    ("ible", "ble"),
    ("less", "less"),
    ("ing", "ing"),
    ("ous", "ous"),
    ("ful", "ful"),
    ("ive", "ive"),
    ("ity", "ity"),
    ("est", "est"),
    ("ly", "ly"),
    ("ed", "ed"),
    ("er", "er"),
    ("al", "al"),
    ("s", "s"),
)
_SPECIAL_TOKEN = re.compile(r"^\[.*\]$|^<.*>$")


@dataclass(frozen=True)
class AugmentConfig:
    """The ``transfer.augment`` settings; ``n = 0`` switches augmentation off."""

    n: int = 0
    p_mask: float = 0.1
    p_pos: float = 0.1
    p_ngram: float = 0.25
    ngram_max: int = 5
    seed: int = 0
    mask_token: str = "[MASK]"

    def __post_init__(self) -> None:
        problems = []
        if self.n < 0:
            problems.append(f"n must be >= 0 (got {self.n})")
        for name in ("p_mask", "p_pos", "p_ngram"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be in [0, 1] (got {value})")
        if self.p_mask + self.p_pos > 1.0:
            problems.append(f"p_mask + p_pos must be <= 1 (got {self.p_mask + self.p_pos})")
        if self.ngram_max < 1:
            problems.append(f"ngram_max must be >= 1 (got {self.ngram_max})")
        if not self.mask_token:
            problems.append("mask_token must not be empty")
        if problems:
            raise KDError("bad transfer.augment settings: " + "; ".join(problems))

    @property
    def enabled(self) -> bool:
        return self.n > 0

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, **overrides: Any) -> AugmentConfig:
        """Build from the ``transfer.augment`` config block; ``None`` overrides are ignored."""
        values = dict(mapping.items()) if mapping is not None else {}
        values |= {k: v for k, v in overrides.items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise KDError(f"unknown transfer.augment setting(s) {unknown}; known: {', '.join(sorted(known))}")
        kinds = {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}
        converted: dict[str, Any] = {}
        for k, v in values.items():
            try:
                converted[k] = kinds[k](v)
            except (TypeError, ValueError) as err:
                raise KDError(f"transfer.augment.{k}={v!r}: expected {kinds[k].__name__}") from err
            if kinds[k] is int and converted[k] != v and not isinstance(v, str):
                raise KDError(f"transfer.augment.{k}={v!r}: expected an integer")
        return cls(**converted)

    def describe(self) -> dict[str, Any]:
        return asdict(self)


# -- word classes -------------------------------------------------------------------------------


def word_shape(word: str) -> str:
    """'punct' (no letter or digit), 'num' (has a digit), 'cap' (starts upper-case) or 'lower'."""
    if not any(ch.isalnum() for ch in word):
        return "punct"
    if any(ch.isdigit() for ch in word):
        return "num"
    return "cap" if word[0].isupper() else "lower"


def suffix_class(word: str) -> str:
    """The longest known suffix of an alphabetic word (see ``SUFFIXES``), or '' for none."""
    if not word.isalpha():
        return ""
    lower = word.lower()
    for ending, cls in SUFFIXES:
        if len(lower) >= len(ending) + 3 and lower.endswith(ending):
            if ending == "s" and lower.endswith("ss"):
                return ""
            return cls
    return ""


class _WeightedPools:
    """Words grouped by class key, sampled by corpus frequency within the class, the word itself excluded."""

    def __init__(self, counts: Mapping[Hashable, Counter[str]]) -> None:
        self._pools: dict[Hashable, tuple[list[str], list[int], dict[str, int]]] = {}
        for key, counter in counts.items():
            words = sorted(counter)
            cum, total = [], 0
            for w in words:
                total += counter[w]
                cum.append(total)
            self._pools[key] = (words, cum, {w: i for i, w in enumerate(words)})

    def sample(self, key: Hashable, word: str, rng: random.Random) -> str | None:
        """A word of class ``key`` other than ``word`` (frequency-weighted), or None if there is none."""
        pool = self._pools.get(key)
        if pool is None:
            return None
        words, cum, index = pool
        i = index.get(word)
        lo = cum[i - 1] if i else 0  # the word's own mass is [lo, hi)
        hi = cum[i] if i is not None else 0
        rest = cum[-1] - (hi - lo)
        if rest <= 0:
            return None
        u = rng.random() * rest
        if i is not None and u >= lo:
            u += hi - lo
        return words[min(bisect.bisect_right(cum, u), len(words) - 1)]


class WordReplacer(Protocol):
    """Gives each word of a sentence a class key, and samples a replacement of the same class."""

    name: str

    def annotate(self, words: list[str]) -> list[Hashable]: ...

    def sample(self, key: Hashable, word: str, rng: random.Random) -> str | None: ...


class FrequencySuffixReplacer:
    """Fallback without tagger or embeddings: class = (shape, suffix class, frequency-rank bucket)."""

    name = "frequency-suffix"

    def __init__(self, sentences: Sequence[list[str]]) -> None:
        counts = Counter(w for words in sentences for w in words)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        self._key = {w: (word_shape(w), suffix_class(w), int(math.log2(rank + 1))) for rank, w in enumerate(ranked)}
        by_class: dict[Hashable, Counter[str]] = defaultdict(Counter)
        for w, c in counts.items():
            by_class[self._key[w]][w] = c
        self._pools = _WeightedPools(by_class)

    def key_of(self, word: str) -> Hashable:
        return self._key.get(word, (word_shape(word), suffix_class(word), -1))

    def annotate(self, words: list[str]) -> list[Hashable]:
        return [self.key_of(w) for w in words]

    def sample(self, key: Hashable, word: str, rng: random.Random) -> str | None:
        return self._pools.sample(key, word, rng)


class TaggerReplacer:
    """Real POS classes: tag each sentence in context, pool words by tag with corpus frequencies."""

    def __init__(self, sentences: Sequence[list[str]], tagger: Tagger, name: str = "pos-tagger") -> None:
        self.name = name
        self._tags: dict[tuple[str, ...], list[str]] = {}
        by_tag: dict[Hashable, Counter[str]] = defaultdict(Counter)
        for words in sentences:
            tags = self._tag(words, tagger)
            for w, t in zip(words, tags, strict=True):
                by_tag[t][w] += 1
        self._pools = _WeightedPools(by_tag)
        self._tagger = tagger

    def _tag(self, words: list[str], tagger: Tagger) -> list[str]:
        key = tuple(words)
        if key not in self._tags:
            tags = list(tagger(words)) if words else []
            if len(tags) != len(words):
                raise ValueError(f"the tagger returned {len(tags)} tags for {len(words)} words")
            self._tags[key] = tags
        return self._tags[key]

    def annotate(self, words: list[str]) -> list[Hashable]:
        return list(self._tag(words, self._tagger))

    def sample(self, key: Hashable, word: str, rng: random.Random) -> str | None:
        return self._pools.sample(key, word, rng)


@dataclass(frozen=True)
class EmbeddingVocab:
    """A teacher's vocabulary (id → token) and input-embedding matrix [V, H]."""

    tokens: list[str]
    matrix: np.ndarray

    @classmethod
    def from_teacher(cls, teacher: Any) -> EmbeddingVocab:
        """From anything with a HF ``tokenizer`` and a ``model`` with ``get_input_embeddings()``."""
        weight = teacher.model.get_input_embeddings().weight.detach().float().cpu().numpy()
        rows = min(len(teacher.tokenizer), weight.shape[0])
        tokens = teacher.tokenizer.convert_ids_to_tokens(list(range(rows)))
        return cls([str(t) for t in tokens], weight[:rows])


class NeighbourReplacer:
    """Replace a word by one of its nearest neighbours in the teacher's embedding space."""

    def __init__(self, sentences: Sequence[list[str]], vocab: EmbeddingVocab, k: int = NEIGHBOURS) -> None:
        self.name = f"embedding-neighbours(k={k})"
        self._fallback = FrequencySuffixReplacer(sentences)
        index = {t: i for i, t in enumerate(vocab.tokens) if not t.startswith("##") and not _SPECIAL_TOKEN.match(t)}
        corpus = sorted({w for words in sentences for w in words})
        row_of: dict[str, int] = {}
        for w in corpus:
            row = index.get(w, index.get(w.lower()))
            if row is not None:
                row_of[w] = row
        self._neighbours: dict[str, list[str]] = {}
        by_shape: dict[str, list[str]] = defaultdict(list)
        for w in row_of:
            by_shape[word_shape(w)].append(w)
        for words in by_shape.values():
            if len(words) < 2:
                continue
            emb = np.asarray(vocab.matrix[[row_of[w] for w in words]], dtype=np.float32)
            emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            kk = min(k, len(words) - 1)
            for start in range(0, len(words), 1024):
                sims = emb[start : start + 1024] @ emb.T
                diag = np.arange(sims.shape[0])
                sims[diag, start + diag] = -np.inf  # never the word itself
                top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
                for r, cols in enumerate(top):
                    w = words[start + r]
                    ordered = sorted(cols, key=lambda c, r=r: (-sims[r, c], words[c]))
                    # case variants of the word share its vocabulary row: they are no replacement
                    self._neighbours[w] = [words[c] for c in ordered if row_of[words[c]] != row_of[w]]

    def neighbours(self, word: str) -> list[str]:
        return self._neighbours.get(word, [])

    def annotate(self, words: list[str]) -> list[Hashable]:
        return [("nn", w) if self._neighbours.get(w) else self._fallback.key_of(w) for w in words]

    def sample(self, key: Hashable, word: str, rng: random.Random) -> str | None:
        if isinstance(key, tuple) and key[0] == "nn":
            return rng.choice(self._neighbours[word])
        return self._fallback.sample(key, word, rng)


def nltk_tagger() -> Tagger | None:
    """NLTK's averaged perceptron tagger if the package and its data are installed (never downloads)."""
    try:
        import nltk
        from nltk.tag.perceptron import PerceptronTagger
    except ImportError:
        return None
    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng/")
        tagger = PerceptronTagger()
    except Exception:  # any failure to load optional data means: use the fallback
        return None
    return lambda words: [tag for _, tag in tagger.tag(words)]


def make_replacer(
    sentences: Sequence[list[str]], vocab: EmbeddingVocab | None = None, tagger: Tagger | str | None = "auto"
) -> WordReplacer:
    """The best available replacer: a tagger, else embedding neighbours, else frequency-suffix classes.

    ``tagger``: a callable, ``"auto"`` (NLTK if its data is present) or ``None`` (no tagger).
    """
    name = "pos-tagger"
    if tagger == "auto":
        tagger, name = nltk_tagger(), "pos-tagger(nltk-averaged-perceptron)"
    elif isinstance(tagger, str):
        raise ValueError(f"tagger must be a callable, 'auto' or None, not {tagger!r}")
    if tagger is not None:
        return TaggerReplacer(sentences, tagger, name)
    if vocab is not None:
        return NeighbourReplacer(sentences, vocab)
    return FrequencySuffixReplacer(sentences)


# -- the rules ----------------------------------------------------------------------------------


def synthesize(
    words: list[str], keys: list[Hashable], config: AugmentConfig, replacer: WordReplacer, rng: random.Random
) -> list[str]:
    """One synthetic sentence: per-word masking / POS replacement, then maybe n-gram sampling."""
    out = []
    for word, key in zip(words, keys, strict=True):
        x = rng.random()
        if x < config.p_mask:
            out.append(config.mask_token)
        elif x < config.p_mask + config.p_pos:
            out.append(replacer.sample(key, word, rng) or word)
        else:
            out.append(word)
    if out and rng.random() < config.p_ngram:
        n = min(rng.randint(1, config.ngram_max), len(out))
        start = rng.randint(0, len(out) - n)
        out = out[start : start + n]
    return out


def augment_texts(
    texts: Sequence[str],
    config: AugmentConfig,
    vocab: EmbeddingVocab | None = None,
    tagger: Tagger | str | None = "auto",
    replacer: WordReplacer | None = None,
) -> tuple[list[str], str]:
    """Synthetic sentences for ``texts`` (new, unique, in corpus order) and the replacer's name."""
    if not config.enabled:
        return [], "none"
    sentences = [t.split() for t in texts]
    replacer = replacer or make_replacer(sentences, vocab, tagger)
    seen = set(texts) | {" ".join(words) for words in sentences}
    synthetic: list[str] = []
    for text, words in zip(texts, sentences, strict=True):
        if not words:
            continue
        keys = replacer.annotate(words)
        rng = random.Random(f"{config.seed}\x1f{text}")
        for _ in range(config.n):
            candidate = " ".join(synthesize(words, keys, config, replacer, rng))
            if candidate not in seen:
                seen.add(candidate)
                synthetic.append(candidate)
    return synthetic, replacer.name


# -- the extra file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraTexts:
    texts: list[str]
    sha256: str


def read_extra(path: str | Path, setting: str = "transfer.extra") -> ExtraTexts:
    """One sentence per line (surrounding whitespace stripped, blank lines skipped), with the file's hash."""
    file = Path(path)
    if not file.is_file():
        raise KDError(f"{setting}={str(path)!r}: no such file (one unlabelled sentence per line expected)")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise KDError(f"{setting}={str(path)!r} is not UTF-8 text: {err}") from err
    return ExtraTexts([s for s in (line.strip() for line in lines) if s], hash_file(file))


def unique_new(texts: Iterable[str], seen: set[str]) -> list[str]:
    """``texts`` in order without those already in ``seen`` (which is updated)."""
    out = []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out
