"""Transfer-set augmentation (Tang et al. 2019 rules), the extra file, and their place in the cache key."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from transfer.augment import (
    AugmentConfig,
    EmbeddingVocab,
    FrequencySuffixReplacer,
    NeighbourReplacer,
    TaggerReplacer,
    augment_texts,
    make_replacer,
    nltk_tagger,
    read_extra,
    suffix_class,
    word_shape,
)
from transfer.cache import cache_key
from transfer.errors import KDError
from transfer.tasks import Split, Task
from transfer.transfer_set import make_transfer_set

MASK_ONLY = {"p_mask": 0.1, "p_pos": 0.0, "p_ngram": 0.0}
POS_ONLY = {"p_mask": 0.0, "p_pos": 1.0, "p_ngram": 0.0}
NGRAM_ONLY = {"p_mask": 0.0, "p_pos": 0.0, "p_ngram": 1.0}

CORPUS = [
    "the movie was great and the acting was lovely",
    "a film that is boring , slowly paced and badly acted",
    "this story felt charming",
    "the plot was dull",
    "an awful script , terribly written",
    "the music is wonderful in 1998",
]


def make_task(texts: list[str] = CORPUS) -> Task:
    labels = np.arange(len(texts), dtype=np.int64) % 2
    return Task(
        name="toy",
        labels=["neg", "pos"],
        metric="accuracy",
        train=Split(list(texts), labels),
        dev=Split(["good", "bad"], np.array([1, 0])),
        test=Split(["fine", "poor"], np.array([1, 0])),
    )


def key_of(**kwargs: object) -> str:
    return cache_key("teacher-x", make_transfer_set(make_task(), tagger=None, **kwargs))  # type: ignore[arg-type]


# -- the rules -------------------------------------------------------------------------------------


def test_masking_rate_is_about_p_mask_on_a_long_sentence() -> None:
    long = " ".join(f"w{i}" for i in range(4000))
    for token in ("[MASK]", "<mask>"):
        (out,), _ = augment_texts([long], AugmentConfig(n=1, mask_token=token, **MASK_ONLY), tagger=None)
        words = out.split()
        assert len(words) == 4000
        assert 0.085 < words.count(token) / len(words) < 0.115
        assert all(w == token or w == f"w{i}" for i, w in enumerate(words))  # nothing else changed


def replaced_pairs(replacer: object, config: AugmentConfig) -> list[tuple[str, str]]:
    """(original word, new word) for every word POS replacement changed, sentence by sentence."""
    pairs = []
    for text in CORPUS:
        synthetic, _ = augment_texts([text], config, replacer=replacer)  # type: ignore[arg-type]
        for new in synthetic:
            assert len(new.split()) == len(text.split())  # replacement only, no masking / n-grams
            pairs += [(a, b) for a, b in zip(text.split(), new.split(), strict=True) if a != b]
    return pairs


def test_pos_replacement_keeps_the_tag_with_a_tagger() -> None:
    def tagger(words: list[str]) -> list[str]:  # a stand-in tagger: the tag is the word's length
        return [str(len(w)) for w in words]

    sentences = [s.split() for s in CORPUS]
    replacer = make_replacer(sentences, tagger=tagger)
    assert replacer.name == "pos-tagger"
    pairs = replaced_pairs(replacer, AugmentConfig(n=3, **POS_ONLY))
    vocabulary = {w for s in sentences for w in s}
    assert len(pairs) > 20
    assert all(len(a) == len(b) and b in vocabulary for a, b in pairs)


def test_tagger_replacer_samples_by_corpus_frequency_and_never_the_word_itself() -> None:
    sentences = [["a", "x"]] * 9 + [["b", "x"], ["c", "y"]]
    replacer = TaggerReplacer(sentences, lambda ws: ["D" if w in "abc" else "N" for w in ws])
    rng = random.Random(0)
    draws = [replacer.sample("D", "c", rng) for _ in range(1000)]
    assert "c" not in draws and 0.8 < draws.count("a") / 1000 < 0.95  # a:9, b:1
    assert all(replacer.sample("N", "x", rng) == "y" for _ in range(20))  # x is 10x more frequent
    assert all(replacer.sample("N", "y", rng) == "x" for _ in range(20))
    assert replacer.sample("D", "unseen", rng) in {"a", "b", "c"}
    assert replacer.sample("Z", "a", rng) is None


def test_frequency_suffix_fallback_keeps_shape_suffix_and_bucket() -> None:
    replacer = FrequencySuffixReplacer([s.split() for s in CORPUS])
    assert make_replacer([s.split() for s in CORPUS], tagger=None).name == "frequency-suffix"
    pairs = replaced_pairs(replacer, AugmentConfig(n=5, **POS_ONLY))
    assert len(pairs) > 10
    assert all(replacer.key_of(a) == replacer.key_of(b) for a, b in pairs)
    assert replacer.key_of("the")[2] == 0  # the most frequent word is alone in bucket 0: never replaced
    assert replacer.sample(replacer.key_of("the"), "the", random.Random(0)) is None
    assert replacer.key_of("slowly")[:2] == replacer.key_of("terribly")[:2] == ("lower", "ly")


def test_word_classes() -> None:
    assert [word_shape(w) for w in (",", "1998", "Paris", "film")] == ["punct", "num", "cap", "lower"]
    assert [suffix_class(w) for w in ("slowly", "acting", "creation", "readable", "films", "glass", "is")] == [
        "ly",
        "ing",
        "ion",
        "ble",
        "s",
        "",
        "",
    ]


def toy_vocab() -> EmbeddingVocab:
    tokens = ["[PAD]", "[MASK]", "good", "great", "bad", "awful", "##ly", "film", ",", "."]
    rows = [
        [0, 0, 9],  # [PAD]
        [0, 0, 9],  # [MASK]
        [1, 0.1, 0],  # good
        [1, 0.2, 0],  # great
        [-1, 0.1, 0],  # bad
        [-1, 0.2, 0],  # awful
        [1, 0.15, 0],  # ##ly: closest to good, but a word piece
        [0, 1, 0],  # film
        [0.5, 0.5, 0],  # ,
        [0.5, 0.4, 0],  # .
    ]
    matrix = np.array(rows, dtype=np.float32)
    return EmbeddingVocab(tokens, matrix)


def test_embedding_neighbour_fallback() -> None:
    sentences = [s.split() for s in ("good film , bad", "great . awful", "Good stuff")]
    replacer = NeighbourReplacer(sentences, toy_vocab(), k=1)
    assert replacer.neighbours("good") == ["great"] and replacer.neighbours("bad") == ["awful"]
    assert replacer.neighbours(",") == ["."]  # punctuation only among punctuation
    assert "Good" not in replacer.neighbours("good")  # a case variant is the same vocabulary entry
    assert replacer.neighbours("stuff") == []  # not in the vocabulary: frequency-suffix fallback
    rng = random.Random(0)
    assert replacer.sample(replacer.annotate(["good"])[0], "good", rng) == "great"
    assert isinstance(make_replacer(sentences, toy_vocab(), tagger=None), NeighbourReplacer)
    assert isinstance(make_replacer(sentences, toy_vocab(), tagger=lambda ws: ["X"] * len(ws)), TaggerReplacer)
    synthetic, name = augment_texts(
        ["good film , bad"], AugmentConfig(n=10, **POS_ONLY), vocab=toy_vocab(), tagger=None
    )
    assert name.startswith("embedding-neighbours")
    assert synthetic and all(not ({"[PAD]", "[MASK]", "##ly"} & set(t.split())) for t in synthetic)


class FakeTokenizer:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


def test_embedding_vocab_from_a_teacher() -> None:
    embedding = torch.nn.Embedding(12, 3)  # padded to more rows than the tokenizer has tokens
    teacher = SimpleNamespace(
        tokenizer=FakeTokenizer(toy_vocab().tokens), model=SimpleNamespace(get_input_embeddings=lambda: embedding)
    )
    vocab = EmbeddingVocab.from_teacher(teacher)
    assert vocab.tokens == toy_vocab().tokens and vocab.matrix.shape == (10, 3)
    assert np.allclose(vocab.matrix, embedding.weight.detach().numpy()[:10])


def test_ngram_lengths_within_range_and_contiguous() -> None:
    long = [" ".join(f"s{j}w{i}" for i in range(12)) for j in range(40)]
    synthetic, _ = augment_texts(long, AugmentConfig(n=5, **NGRAM_ONLY), tagger=None)
    lengths = {len(t.split()) for t in synthetic}
    assert lengths == {1, 2, 3, 4, 5}
    for t in synthetic:
        j = int(t.split()[0][1 : t.index("w")])
        assert f" {t} " in f" {long[j]} "
    short, _ = augment_texts(long, AugmentConfig(n=5, ngram_max=2, **NGRAM_ONLY), tagger=None)
    assert {len(t.split()) for t in short} == {1, 2}


def test_deterministic_for_a_seed_different_for_another() -> None:
    config = AugmentConfig(n=4, seed=3)
    first, _ = augment_texts(CORPUS, config, tagger=None)
    again, _ = augment_texts(CORPUS, config, tagger=None)
    other, _ = augment_texts(CORPUS, AugmentConfig(n=4, seed=4), tagger=None)
    assert first == again and first != other
    # a sentence's synthetic examples do not depend on its position in the corpus
    alone, _ = augment_texts(
        CORPUS[2:3], config, tagger=None, replacer=FrequencySuffixReplacer([s.split() for s in CORPUS])
    )
    both, _ = augment_texts(CORPUS, config, tagger=None)
    assert set(alone) <= set(both)


def test_duplicates_and_copies_of_originals_dropped() -> None:
    texts = ["a b", "a b", "c d e"]
    synthetic, _ = augment_texts(texts, AugmentConfig(n=50), tagger=None)
    assert len(synthetic) == len(set(synthetic))
    assert not set(synthetic) & set(texts)
    nothing, _ = augment_texts(texts, AugmentConfig(n=50, p_mask=0, p_pos=0, p_ngram=0), tagger=None)
    assert nothing == []  # every try reproduces its original


def test_n_zero_is_no_augmentation() -> None:
    task = make_task()
    assert augment_texts(CORPUS, AugmentConfig(n=0), tagger=None) == ([], "none")
    plain = make_transfer_set(task)
    off = make_transfer_set(task, AugmentConfig(n=0, p_mask=0.5), None, tagger=None)
    assert off.texts == plain.texts == CORPUS and off.description == plain.description == {"source": "train"}
    assert cache_key("t", off) == cache_key("t", plain)


def test_augmented_texts_are_unlabelled_and_described() -> None:
    task = make_task()
    ts = make_transfer_set(task, AugmentConfig(n=3), tagger=None)
    n = len(CORPUS)
    assert ts.texts[:n] == CORPUS and len(ts.texts) > n
    assert ts.labels[:n].tolist() == task.train.labels.tolist() and (ts.labels[n:] == -1).all()
    described = ts.description["augment"]
    assert ts.description["source"] == "train+augment"
    assert described["n"] == 3 and described["replacement"] == "frequency-suffix"
    assert described["synthetic"] == len(ts.texts) - n
    assert ts.dev_texts == ["good", "bad"]


# -- the extra file --------------------------------------------------------------------------------


def test_extra_file_lines_added_unlabelled(tmp_path: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("an unseen sentence\n\n   \n  another one  \nthe plot was dull\nan unseen sentence\n")
    assert read_extra(extra).texts == ["an unseen sentence", "another one", "the plot was dull", "an unseen sentence"]
    ts = make_transfer_set(make_task(), extra=str(extra), tagger=None)
    # blank lines skipped, whitespace stripped, repeats of training (or earlier extra) texts dropped
    assert ts.texts == [*CORPUS, "an unseen sentence", "another one"]
    assert ts.labels[len(CORPUS) :].tolist() == [-1, -1]
    assert ts.description["source"] == "train+extra"
    assert ts.description["extra"]["lines"] == 4 and ts.description["extra"]["added"] == 2
    both = make_transfer_set(make_task(), AugmentConfig(n=2), extra=str(extra), tagger=None)
    assert both.description["source"] == "train+augment+extra" and both.texts[-2:] == [
        "an unseen sentence",
        "another one",
    ]


def test_extra_file_never_adds_a_dev_or_test_sentence(tmp_path: Path) -> None:
    """A held-out sentence in the extra file would get the teacher's soft label in training."""
    extra = tmp_path / "extra.txt"
    extra.write_text("good\nfine\nreally new\npoor\nbad\n")  # dev: good, bad; test: fine, poor
    ts = make_transfer_set(make_task(), extra=str(extra), tagger=None)
    assert ts.texts[len(CORPUS) :] == ["really new"]
    assert ts.test_texts == ["fine", "poor"] and ts.dev_texts == ["good", "bad"]


def test_missing_extra_file_raises_kderror_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KDError, match=r"transfer\.extra"):
        make_transfer_set(make_task(), extra=str(tmp_path / "nope.txt"))
    with pytest.raises(KDError, match=r"transfer\.extra"):
        make_transfer_set(make_task(), extra=str(tmp_path))  # a directory is no file either


# -- the cache key ---------------------------------------------------------------------------------


def test_cache_key_changes_with_augmentation_settings() -> None:
    keys = [
        key_of(),
        key_of(augment=AugmentConfig(n=2)),
        key_of(augment=AugmentConfig(n=3)),
        key_of(augment=AugmentConfig(n=2, p_mask=0.2)),
        key_of(augment=AugmentConfig(n=2, p_ngram=0.5)),
        key_of(augment=AugmentConfig(n=2, ngram_max=3)),
        key_of(augment=AugmentConfig(n=2, seed=1)),
        key_of(augment=AugmentConfig(n=2, mask_token="<mask>")),
    ]
    assert len(set(keys)) == len(keys)
    assert key_of(augment=AugmentConfig(n=2)) == keys[1]  # and is stable


def test_cache_key_follows_the_extra_file_content_not_its_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one sentence\n")
    b.write_text("one sentence\n")
    first = key_of(extra=str(a))
    assert first != key_of()
    assert key_of(extra=str(b)) == first
    a.write_text("one sentence\nanother\n")
    assert key_of(extra=str(a)) != first
    a.write_text("one sentence\n\n")  # same texts, other bytes: the hash is the file's
    assert key_of(extra=str(a)) != first


# -- configuration ---------------------------------------------------------------------------------


def test_augment_config_validation_and_mapping() -> None:
    assert AugmentConfig.from_mapping(None) == AugmentConfig()
    cfg = AugmentConfig.from_mapping({"n": 2, "p_mask": 0.2}, mask_token=None)
    assert cfg.n == 2 and cfg.p_mask == 0.2 and cfg.mask_token == "[MASK]"
    assert AugmentConfig.from_mapping({}, mask_token="<mask>").mask_token == "<mask>"
    for bad in ({"p_mask": 1.5}, {"p_mask": 0.6, "p_pos": 0.6}, {"n": -1}, {"ngram_max": 0}):
        with pytest.raises(KDError, match=r"transfer\.augment"):
            AugmentConfig.from_mapping(bad)
    with pytest.raises(KDError, match=r"unknown transfer\.augment"):
        AugmentConfig.from_mapping({"p_swap": 0.1})
    with pytest.raises(KDError, match=r"transfer\.augment\.n"):
        AugmentConfig.from_mapping({"n": 2.5})


def test_study_config_has_augment_block_off_by_default() -> None:
    from studies.config import compose

    cfg = compose(["transfer.augment.n=4", "transfer.extra=/tmp/x.txt"])
    assert AugmentConfig.from_mapping(cfg.transfer.augment).n == 4
    assert cfg.transfer.extra == "/tmp/x.txt"
    default = compose([])
    assert AugmentConfig.from_mapping(default.transfer.augment) == AugmentConfig()
    assert default.transfer.extra is None


def test_nltk_tagger_absent_means_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nltk", None)  # import fails
    assert nltk_tagger() is None
    assert isinstance(make_replacer([["a", "b"]], tagger="auto"), FrequencySuffixReplacer)


# -- with a real (tiny) teacher --------------------------------------------------------------------


def test_tiny_teacher_labels_an_augmented_transfer_set(tiny_task, tiny_teacher, tmp_path: Path) -> None:
    from transfer.cache import get_or_build_cache

    config = AugmentConfig(n=2, mask_token=tiny_teacher.tokenizer.mask_token)
    ts = make_transfer_set(tiny_task, config, vocab_source=tiny_teacher, tagger=None)
    n = len(tiny_task.train)
    assert ts.description["augment"]["replacement"].startswith("embedding-neighbours")
    assert len(ts.texts) > n
    masked = next(t for t in ts.texts[n:] if "[MASK]" in t)
    assert tiny_teacher.tokenizer.mask_token_id in tiny_teacher.tokenizer(masked)["input_ids"]
    cache = get_or_build_cache(tiny_teacher, ts, tmp_path)
    assert len(cache) == len(ts.texts) and cache.logits.shape[0] == len(ts.texts)
    assert (cache.labels[n:] == -1).all() and (cache.labels[:n] >= 0).all()
    assert cache.manifest["transfer"]["augment"]["n"] == 2
