"""The content-addressed transfer cache: round trip, keys, cache hits, resumable writes, corruption."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import transfer.cache as cache_mod
from transfer.cache import STATS, CacheCorrupted, TransferCache, TransferSet, cache_key, get_or_build_cache
from transfer.errors import KDError
from transfer.transfer_set import make_transfer_set

N_LAYERS, WIDTH = 3, 4


class Interrupted(RuntimeError):
    """Raised by a FakeLabeler to simulate a crash in the middle of labelling."""


class FakeLabeler:
    """A deterministic labeler that counts its calls; outputs depend on each text alone (not on its batch)."""

    def __init__(self, fingerprint: str = "fake-1", fail_after: int | None = None, activations: bool = True) -> None:
        self._fingerprint = fingerprint
        self.fail_after = fail_after
        self.activations = activations
        self.calls = 0
        self.batches: list[list[str]] = []

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(t.split()) for t in texts])

    @staticmethod
    def logits_of(texts: Sequence[str]) -> np.ndarray:
        codes = np.array([zlib.crc32(t.encode()) % 1000 for t in texts], dtype=np.float32)
        return np.stack([codes / 100.0, -codes / 250.0], axis=1)

    @staticmethod
    def activations_of(texts: Sequence[str]) -> np.ndarray:
        codes = np.array([zlib.crc32(t.encode()) % 997 for t in texts], dtype=np.float32)
        grid = np.arange(N_LAYERS * WIDTH, dtype=np.float32).reshape(N_LAYERS, WIDTH)
        return codes[:, None, None] / 97.0 + grid[None] / 8.0

    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted(f"killed after {self.calls} batches")
        self.calls += 1
        self.batches.append(list(texts))
        return self.logits_of(texts), (self.activations_of(texts) if self.activations else None)

    def write_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.txt").write_text(self._fingerprint)


def make_transfer(n_train: int = 40, n_dev: int = 12, tag: str = "") -> TransferSet:
    """Texts of varied length (so length sorting reorders them) with gold labels."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]

    def texts(n: int, split: str) -> list[str]:
        return [f"{split}{tag} {i} " + " ".join(rng.choice(words, size=int(rng.integers(0, 9)))) for i in range(n)]

    return TransferSet(
        texts=texts(n_train, "train"),
        labels=np.arange(n_train, dtype=np.int64) % 2,
        dev_texts=texts(n_dev, "dev"),
        dev_labels=(np.arange(n_dev, dtype=np.int64) + 1) % 2,
        label_names=["negative", "positive"],
        task="fake",
    )


def n_batches(n: int, batch_size: int, chunk: int) -> int:
    """Label calls a fresh build makes for ``n`` texts (batches never straddle chunks)."""
    full, rest = divmod(n, chunk)
    return full * -(-chunk // batch_size) + -(-rest // batch_size)


@pytest.fixture
def stats(fresh_stats):
    """``transfer.cache.STATS``, zeroed for the test (conftest's ``fresh_stats``)."""
    assert fresh_stats is STATS
    return fresh_stats


def test_round_trip_values_dtypes_memmap_and_manifest(tmp_path: Path, stats) -> None:
    transfer = make_transfer()
    labeler = FakeLabeler()
    cache = get_or_build_cache(labeler, transfer, tmp_path, batch_size=8)

    assert cache.path == tmp_path / cache_key(labeler.fingerprint, transfer)
    assert cache.texts == transfer.texts and cache.dev_texts == transfer.dev_texts
    np.testing.assert_array_equal(cache.labels, transfer.labels)
    np.testing.assert_array_equal(cache.dev_labels, transfer.dev_labels)
    for got, texts in ((cache.logits, transfer.texts), (cache.dev_logits, transfer.dev_texts)):
        assert isinstance(got, np.memmap) and got.dtype == np.float16
        np.testing.assert_array_equal(got, FakeLabeler.logits_of(texts).astype(np.float16))
    for got, texts in ((cache.activations, transfer.texts), (cache.dev_activations, transfer.dev_texts)):
        assert isinstance(got, np.memmap) and got.dtype == np.float16
        assert got.shape == (len(texts), N_LAYERS, WIDTH)
        np.testing.assert_array_equal(got, FakeLabeler.activations_of(texts).astype(np.float16))
    assert cache.labels.dtype == np.int64
    assert len(cache) == len(transfer.texts) and cache.num_labels == 2
    assert (cache.assets / "fake.txt").read_text() == "fake-1"

    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["key"] == cache.key == cache.path.name
    assert manifest["labeler"] == "fake-1" == cache.labeler_fingerprint
    assert manifest["data_fingerprint"] == transfer.fingerprint()
    assert manifest["created"]
    n, d = len(transfer.texts), len(transfer.dev_texts)
    assert manifest["shapes"] == {
        "train_labels": [n],
        "train_logits": [n, 2],
        "train_activations": [n, N_LAYERS, WIDTH],
        "dev_labels": [d],
        "dev_logits": [d, 2],
        "dev_activations": [d, N_LAYERS, WIDTH],
    }
    assert manifest["dtypes"]["train_logits"] == "float16"
    assert manifest["dtypes"]["train_activations"] == "float16"
    assert manifest["dtypes"]["train_labels"] == "int64"
    expected_files = {f"{s}_{a}.npy" for s in ("train", "dev") for a in ("labels", "logits", "activations")}
    assets = {f"assets/{p.relative_to(cache.assets).as_posix()}" for p in cache.assets.rglob("*") if p.is_file()}
    assert assets  # the labeler's assets are covered too
    assert set(manifest["checksums"]) == expected_files | {"train_texts.json", "dev_texts.json"} | assets
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in manifest["checksums"].values())

    # the build left nothing behind but the cache and its lock
    assert not (tmp_path / f"{cache.key}.partial").exists()
    assert not list(cache.path.glob("*chunk*"))
    assert stats.passes == 1 and stats.examples == n + d
    assert stats.batches == labeler.calls == -(-n // 8) + -(-d // 8)


def test_labeler_without_activations(tmp_path: Path) -> None:
    cache = get_or_build_cache(FakeLabeler(activations=False), make_transfer(), tmp_path)
    assert cache.activations is None and cache.dev_activations is None
    assert "train_activations" not in cache.manifest["shapes"]
    assert cache.logits.shape == (40, 2)


def test_key_depends_on_labeler_and_data() -> None:
    transfer = make_transfer()
    assert cache_key("fake-1", transfer) == cache_key("fake-1", make_transfer())
    assert cache_key("fake-1", transfer) != cache_key("fake-2", transfer)
    assert cache_key("fake-1", transfer) != cache_key("fake-1", make_transfer(tag="x"))
    # a changed label, dev text, or description is other data too
    relabelled = TransferSet(**{**transfer.__dict__, "labels": 1 - transfer.labels})
    other_dev = TransferSet(**{**transfer.__dict__, "dev_texts": [*transfer.dev_texts[:-1], "other"]})
    augmented = TransferSet(**{**transfer.__dict__, "description": {"augment": "eda"}})
    keys = {cache_key("fake-1", t) for t in (transfer, relabelled, other_dev, augmented)}
    assert len(keys) == 4


def test_same_inputs_hit_the_cache_without_labelling(tmp_path: Path, stats) -> None:
    transfer = make_transfer()
    first = FakeLabeler()
    built = get_or_build_cache(first, transfer, tmp_path, batch_size=8)
    assert stats.passes == 1
    calls, examples = first.calls, stats.examples

    again = FakeLabeler()  # same fingerprint: must be served from disk
    hit = get_or_build_cache(again, transfer, tmp_path, batch_size=8)
    assert again.calls == 0 and first.calls == calls
    assert stats.passes == 1 and stats.examples == examples
    assert hit.path == built.path
    np.testing.assert_array_equal(hit.logits, built.logits)

    other = FakeLabeler("fake-2")  # other labeler: other key, labels again
    other_cache = get_or_build_cache(other, transfer, tmp_path, batch_size=8)
    assert other.calls > 0 and stats.passes == 2 and other_cache.path != built.path

    more = FakeLabeler()  # same labeler, other data: other key, labels again
    more_cache = get_or_build_cache(more, make_transfer(tag="x"), tmp_path, batch_size=8)
    assert more.calls > 0 and stats.passes == 3 and more_cache.path not in (built.path, other_cache.path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(
        [built.key, other_cache.key, more_cache.key]
    )


def test_interrupted_build_leaves_no_cache_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stats) -> None:
    monkeypatch.setattr(cache_mod, "CHUNK_SIZE", 10)
    transfer = make_transfer(n_train=40, n_dev=12)
    key = cache_key("fake-1", transfer)
    fresh_calls = n_batches(40, 5, 10) + n_batches(12, 5, 10)

    crashing = FakeLabeler(fail_after=5)  # 2 chunks of 2 batches each are saved, the 3rd is lost
    with pytest.raises(Interrupted):
        get_or_build_cache(crashing, transfer, tmp_path, batch_size=5)
    assert not (tmp_path / key).exists()
    assert not list(tmp_path.rglob("manifest.json"))
    partial = tmp_path / f"{key}.partial"
    assert partial.is_dir()
    assert sorted(p.name for p in partial.glob("*_chunk*.npz")) == ["train_chunk00000.npz", "train_chunk00001.npz"]
    with pytest.raises(KDError, match="no manifest"):
        TransferCache(partial)

    resumed = FakeLabeler()
    cache = get_or_build_cache(resumed, transfer, tmp_path, batch_size=5)
    assert resumed.calls == fresh_calls - 4 < fresh_calls
    assert not partial.exists() and cache.path == tmp_path / key
    assert not list(cache.path.glob("*chunk*"))

    reference = get_or_build_cache(FakeLabeler(), transfer, tmp_path / "fresh", batch_size=5)
    for name in ("logits", "activations", "dev_logits", "dev_activations", "labels"):
        np.testing.assert_array_equal(getattr(cache, name), getattr(reference, name))
    np.testing.assert_array_equal(cache.logits, FakeLabeler.logits_of(transfer.texts).astype(np.float16))


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3:] = bytes(b ^ 0xFF for b in data[-3:])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 16])


@pytest.mark.parametrize("damage", [flip_bytes, truncate], ids=["flipped", "truncated"])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path: Path, damage, stats) -> None:
    transfer = make_transfer()
    cache = get_or_build_cache(FakeLabeler(), transfer, tmp_path, batch_size=8)
    expected = np.array(cache.logits)
    del cache  # release the memmap before damaging the file
    final = tmp_path / cache_key("fake-1", transfer)
    damage(final / "train_logits.npy")

    with pytest.raises(CacheCorrupted, match=r"checksum mismatch in train_logits\.npy"):
        TransferCache(final)
    TransferCache(final, verify=False)  # opening without verification still works (it is the caller's risk)

    labeler = FakeLabeler()
    rebuilt = get_or_build_cache(labeler, transfer, tmp_path, batch_size=8)
    assert labeler.calls > 0 and stats.passes == 2
    assert rebuilt.path == final
    np.testing.assert_array_equal(rebuilt.logits, expected)
    TransferCache(final)  # verifies again
    assert len(list(tmp_path.glob(f"{final.name}.corrupt-*"))) == 1


def test_missing_array_is_corruption(tmp_path: Path) -> None:
    cache = get_or_build_cache(FakeLabeler(), make_transfer(), tmp_path)
    (cache.path / "dev_activations.npy").unlink()
    with pytest.raises(CacheCorrupted, match=r"dev_activations\.npy is missing"):
        TransferCache(cache.path)


def test_length_sorted_labelling_matches_unsorted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "CHUNK_SIZE", 16)
    transfer = make_transfer(n_train=40, n_dev=12)
    sorted_labeler, plain_labeler = FakeLabeler(), FakeLabeler()
    by_length = get_or_build_cache(sorted_labeler, transfer, tmp_path / "sorted", batch_size=4, sort_by_length=True)
    plain = get_or_build_cache(plain_labeler, transfer, tmp_path / "plain", batch_size=4, sort_by_length=False)

    assert by_length.manifest["sorted_batches"] is True and plain.manifest["sorted_batches"] is False
    for name in ("logits", "activations", "dev_logits", "dev_activations", "labels", "dev_labels", "texts"):
        np.testing.assert_array_equal(np.asarray(getattr(by_length, name)), np.asarray(getattr(plain, name)))
    # the sorted build really did label in length order, the plain one in file order
    lengths = {t: n for t, n in zip(transfer.texts, FakeLabeler().text_lengths(transfer.texts), strict=True)}
    sent = [t for batch in sorted_labeler.batches for t in batch if t in lengths]
    assert [lengths[t] for t in sent] == sorted(lengths[t] for t in transfer.texts)
    assert [t for batch in plain_labeler.batches for t in batch][: len(transfer.texts)] == transfer.texts
    assert sent != transfer.texts


def test_tiny_teacher_cache_sorted_matches_unsorted(tiny_teacher, tiny_task, tmp_path: Path) -> None:
    """With a real teacher, padding must not change the outputs: sorted and unsorted caches agree."""
    transfer = make_transfer_set(tiny_task)
    by_length = get_or_build_cache(tiny_teacher, transfer, tmp_path / "sorted", batch_size=16, sort_by_length=True)
    plain = get_or_build_cache(tiny_teacher, transfer, tmp_path / "plain", batch_size=16, sort_by_length=False)
    assert by_length.activations.shape == (len(transfer.texts), 3, 32)
    np.testing.assert_allclose(np.asarray(by_length.logits, np.float32), plain.logits, atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(
        np.asarray(by_length.dev_activations, np.float32), plain.dev_activations, atol=2e-2, rtol=1e-2
    )
