"""SentEval-style probing tasks (Conneau et al. 2018), generated from the task's own sentences.

SentEval's probing data is English Toronto-books text; probing a student distilled on SST-2 with
sentences from a different domain mixes "what the representation encodes" with "domain shift".
So the probing sentences here come from the task itself, and every task is generated from a
seed: the same seed and sentences give byte-identical data, another seed gives another draw.

Tasks (all on whitespace tokens, every text re-joined with single spaces so whitespace never
leaks the label):

- ``sentence_length``: token count, binned at its quantiles (``n_bins`` roughly equal bins).
- ``word_content``: which one of ``k`` mid-frequency words the sentence contains (only sentences
  holding exactly one of them).
- ``bigram_shift``: two adjacent (different) tokens swapped, or not; balanced.
- ``odd_man_out``: one word replaced by a random vocabulary word, or not; balanced (SentEval's
  SOMO without the part-of-speech matching, which needs a tagger).
- ``negation``: the sentence holds a negation word (not, n't, never, ...); balanced by
  down-sampling the majority class. Skipped when the sentences carry too few negations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

NEGATION_WORDS = frozenset(
    {"not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "nowhere", "cannot", "without", "n't"}
)
MIN_PER_CLASS = 5  # a class rarer than this is dropped (too few examples to train and test a probe)


@dataclass(frozen=True)
class ProbingTask:
    name: str
    texts: list[str]
    labels: np.ndarray  # int64 class ids into ``classes``
    classes: list[str]
    description: str

    def __len__(self) -> int:
        return len(self.texts)


def tokens(text: str) -> list[str]:
    return text.split()


def is_negation(token: str) -> bool:
    low = token.lower()
    return low in NEGATION_WORDS or low.endswith("n't")


def source_sentences(texts: Sequence[str], max_sentences: int | None, seed: int, min_tokens: int = 2) -> list[str]:
    """Distinct sentences of at least ``min_tokens`` tokens, normalised, seeded order, at most ``max_sentences``."""
    unique = list(dict.fromkeys(" ".join(tokens(t)) for t in texts))
    unique = [t for t in unique if len(tokens(t)) >= min_tokens]
    order = np.random.default_rng(seed).permutation(len(unique))
    picked = [unique[i] for i in order]
    return picked if max_sentences is None else picked[:max_sentences]


def _relabel(texts: list[str], labels: list[int], names: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """Drop classes with fewer than MIN_PER_CLASS examples and renumber the rest 0..C-1."""
    counts = Counter(labels)
    keep = [c for c in range(len(names)) if counts.get(c, 0) >= MIN_PER_CLASS]
    new_id = {c: i for i, c in enumerate(keep)}
    rows = [(t, new_id[y]) for t, y in zip(texts, labels, strict=True) if y in new_id]
    return [t for t, _ in rows], np.array([y for _, y in rows], dtype=np.int64), [names[c] for c in keep]


def sentence_length(sentences: list[str], rng: np.random.Generator, n_bins: int = 5) -> ProbingTask | None:
    lengths = np.array([len(tokens(s)) for s in sentences])
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1]))
    bins = np.searchsorted(edges, lengths, side="right")  # bin b holds edges[b-1] <= length < edges[b]
    names = []
    for b in range(len(edges) + 1):
        members = lengths[bins == b]
        span = (
            f"{members.min()}"
            if members.size and members.min() == members.max()
            else f"{members.min()}-{members.max()}"
        )
        names.append(f"{span} tokens" if members.size else "empty")
    texts, labels, classes = _relabel(sentences, bins.tolist(), names)
    if len(classes) < 2:
        return None
    return ProbingTask("sentence_length", texts, labels, classes, f"token count in {len(classes)} quantile bins")


def pick_content_words(sentences: list[str], k: int, max_share: float = 0.1) -> list[str]:
    """The ``k`` most frequent alphabetic words among those in at most ``max_share`` of the sentences.

    Very frequent words (the, a, film) are in most sentences, so 'contains exactly one' would rarely
    hold; rare words give too few examples. Mid-frequency = just below the frequent band.
    """
    df = Counter(w for s in sentences for w in set(tokens(s)) if w.isalpha())
    limit = max_share * len(sentences)
    ranked = sorted((w for w, n in df.items() if n <= limit and n >= MIN_PER_CLASS), key=lambda w: (-df[w], w))
    return ranked[:k]


def word_content(sentences: list[str], rng: np.random.Generator, k: int = 10) -> ProbingTask | None:
    words = pick_content_words(sentences, k)
    index = {w: i for i, w in enumerate(words)}
    texts, labels = [], []
    for s in sentences:
        present = {w for w in tokens(s) if w in index}
        if len(present) == 1:
            texts.append(s)
            labels.append(index[present.pop()])
    texts, y, classes = _relabel(texts, labels, words)
    if len(classes) < 2:
        return None
    return ProbingTask("word_content", texts, y, classes, f"which of {len(classes)} mid-frequency words it contains")


def bigram_shift(sentences: list[str], rng: np.random.Generator) -> ProbingTask | None:
    candidates = [s for s in sentences if any(a != b for a, b in zip(tokens(s), tokens(s)[1:], strict=False))]
    order = rng.permutation(len(candidates))
    texts, labels = [], []
    for rank, i in enumerate(order):
        words = tokens(candidates[i])
        if rank < len(order) // 2:
            positions = [j for j in range(len(words) - 1) if words[j] != words[j + 1]]
            j = int(positions[rng.integers(len(positions))])
            words[j], words[j + 1] = words[j + 1], words[j]
            labels.append(1)
        else:
            labels.append(0)
        texts.append(" ".join(words))
    texts, y, classes = _relabel(texts, labels, ["original", "shifted"])
    if len(classes) < 2:
        return None
    return ProbingTask("bigram_shift", texts, y, classes, "two adjacent tokens swapped or not")


def odd_man_out(sentences: list[str], rng: np.random.Generator) -> ProbingTask | None:
    df = Counter(w for s in sentences for w in set(tokens(s)) if w.isalpha())
    vocab = sorted(w for w, n in df.items() if n >= 2)
    candidates = [s for s in sentences if any(w.isalpha() for w in tokens(s))]
    if len(vocab) < 2:
        return None
    order = rng.permutation(len(candidates))
    texts, labels = [], []
    for rank, i in enumerate(order):
        words = tokens(candidates[i])
        if rank < len(order) // 2:
            positions = [j for j, w in enumerate(words) if w.isalpha()]
            j = int(positions[rng.integers(len(positions))])
            replacement = words[j]
            while replacement == words[j]:
                replacement = vocab[int(rng.integers(len(vocab)))]
            words[j] = replacement
            labels.append(1)
        else:
            labels.append(0)
        texts.append(" ".join(words))
    texts, y, classes = _relabel(texts, labels, ["original", "replaced"])
    if len(classes) < 2:
        return None
    return ProbingTask("odd_man_out", texts, y, classes, "one word replaced by a random vocabulary word or not")


def negation(sentences: list[str], rng: np.random.Generator) -> ProbingTask | None:
    flags = np.array([any(is_negation(w) for w in tokens(s)) for s in sentences])
    pos, neg = np.flatnonzero(flags), np.flatnonzero(~flags)
    n = min(len(pos), len(neg))
    if n < MIN_PER_CLASS:
        return None
    chosen = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    chosen = chosen[rng.permutation(len(chosen))]
    labels = flags[chosen].astype(np.int64)
    return ProbingTask(
        "negation", [sentences[i] for i in chosen], labels, ["affirmative", "negated"], "contains a negation word"
    )


Generator = Callable[..., ProbingTask | None]
TASKS: dict[str, Generator] = {
    "sentence_length": sentence_length,
    "word_content": word_content,
    "bigram_shift": bigram_shift,
    "odd_man_out": odd_man_out,
    "negation": negation,
}


def generate_tasks(
    texts: Sequence[str],
    seed: int = 0,
    max_sentences: int | None = 2000,
    names: Sequence[str] | None = None,
    word_content_k: int = 10,
) -> tuple[list[ProbingTask], dict[str, str]]:
    """The probing tasks made from ``texts`` (deterministic in ``seed``), and why any were skipped.

    Each task draws from its own generator seeded by (seed, task index), so adding or removing a
    task never changes the others' data.
    """
    wanted = list(names) if names else list(TASKS)
    unknown = [n for n in wanted if n not in TASKS]
    if unknown:
        from transfer.errors import KDError

        raise KDError(f"unknown probing task(s) {', '.join(unknown)}; known: {', '.join(TASKS)}")
    sentences = source_sentences(texts, max_sentences, seed)
    made: list[ProbingTask] = []
    skipped: dict[str, str] = {}
    for name in wanted:
        rng = np.random.default_rng([seed, list(TASKS).index(name)])
        extra = {"k": word_content_k} if name == "word_content" else {}
        task = TASKS[name](sentences, rng, **extra)
        if task is None:
            skipped[name] = f"too few usable sentences (needs 2 classes of at least {MIN_PER_CLASS})"
        else:
            made.append(task)
    return made, skipped
