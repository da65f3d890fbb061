"""The content-addressed transfer cache: teacher logits and pooled activations, computed once.

Layout of one cache (a directory named by its key)::

    manifest.json            key, labeler fingerprint, data fingerprint, shapes, dtypes, sha256s
    train_texts.json         the transfer set (training texts, then augmented/extra texts)
    train_labels.npy         int64 gold labels, -1 where a text has none (augmented / extra)
    train_logits.npy         float16 [N, C] teacher logits
    train_activations.npy    float16 [N, L, H] per-layer pooled hidden states (may be absent)
    train_derivatives.npy    float16 [N, T, C] gradient × input of each logit per teacher token (only in caches
                             built with derivatives=True; see transfer/derivatives.py)
    dev_*                    the same for the dev split (early stopping, pruning, the best trial)
    test_*                   the same for the test split (reported only: the teacher's test score, agreement)
    assets/                  what students need from the labeler (tokenizer/, embeddings.npy, teacher_model/)

The manifest's checksums cover every file of the directory, assets included.

Writes happen in ``<key>.partial/`` and become visible by one atomic ``rename``; a crash
never leaves a directory that looks complete. Labelling goes in length-sorted chunks that are
kept in the partial directory, so a killed build resumes where it stopped. A file lock makes
concurrent workers wait for the one that labels. Every array's sha256 is checked when a cache
is opened, so flipped or truncated bytes are detected and the cache is rebuilt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from filelock import FileLock
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from transfer.derivatives import FORM as DERIVATIVE_FORM
from transfer.errors import KDError
from transfer.fingerprint import hash_file, hash_json, hash_texts

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: test split labelled too; checksums cover assets/
CHUNK_SIZE = 4096  # examples per resumable chunk (KD_CACHE_CHUNK_SIZE overrides it: tests, tiny machines)


def chunk_size() -> int:
    """Examples per resumable labelling chunk: the ``KD_CACHE_CHUNK_SIZE`` environment variable, else CHUNK_SIZE."""
    value = os.environ.get("KD_CACHE_CHUNK_SIZE")
    return max(1, int(value)) if value else CHUNK_SIZE


class Labeler(Protocol):
    """Anything that can label texts like a teacher: a fine-tuned teacher, or a trained student."""

    @property
    def fingerprint(self) -> str: ...

    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        """Cost of each text (e.g. token count), used to sort batches so they carry little padding."""
        ...

    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits [B, C] and pooled activations [B, L, H] (or None) for one batch."""
        ...

    def write_assets(self, directory: Path) -> None:
        """Store what students need from the labeler (tokenizer, embedding matrix) under ``directory``."""
        ...

    # Optional, for caches with derivatives (``derivatives=True``):
    #   label_batch_with_derivatives(texts) -> (logits, activations | None, derivatives [B, T, C])
    #   derivative_info() -> {"form", "max_length", "vocabulary"}


@dataclass
class LabellingStats:
    """Process-wide counters, so tests and benchmarks can prove the teacher ran exactly once."""

    passes: int = 0  # cache builds that called the labeler
    examples: int = 0  # texts sent through the labeler
    batches: int = 0
    builds: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.passes = self.examples = self.batches = 0
        self.builds.clear()


STATS = LabellingStats()


class CacheCorrupted(KDError):
    """A cache directory whose files do not match its manifest's checksums."""


@dataclass(frozen=True)
class TransferSet:
    """The texts a labeler must label: the training split plus any augmented/extra texts."""

    texts: list[str]
    labels: np.ndarray  # -1 = no gold label
    dev_texts: list[str]
    dev_labels: np.ndarray
    label_names: list[str]
    task: str
    description: dict[str, Any] = field(default_factory=dict)  # augmentation settings, extra file hash
    test_texts: list[str] = field(default_factory=list)  # labelled once too, for reporting only
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def splits(self) -> list[tuple[str, list[str], np.ndarray]]:
        """(prefix, texts, gold labels) of every split the labeler must label."""
        parts = [("train", self.texts, self.labels), ("dev", self.dev_texts, self.dev_labels)]
        return parts + ([("test", self.test_texts, self.test_labels)] if self.test_texts else [])

    def fingerprint(self) -> str:
        return hash_json(
            {
                "train": hash_texts(self.texts, self.labels.tolist()),
                "dev": hash_texts(self.dev_texts, self.dev_labels.tolist()),
                "test": hash_texts(self.test_texts, self.test_labels.tolist()),
                "labels": self.label_names,
                "task": self.task,
                "description": self.description,
            }
        )


def cache_key(labeler_fingerprint: str, transfer: TransferSet, derivatives: bool = False) -> str:
    """Without derivatives the key is what it always was (existing caches stay valid); with them it says their form."""
    parts: dict[str, Any] = {"format": FORMAT_VERSION, "labeler": labeler_fingerprint, "data": transfer.fingerprint()}
    if derivatives:
        parts["derivatives"] = DERIVATIVE_FORM
    return hash_json(parts)


class TransferCache:
    """Read side of a complete cache. Arrays are memory-mapped; nothing is loaded until touched."""

    ARRAYS = ("labels", "logits", "activations", "derivatives")

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise KDError(f"{self.path} is not a complete transfer cache (no manifest.json)")
        try:  # flipped or truncated bytes can hit the manifest itself, not only the arrays it checks
            manifest = json.loads(manifest_path.read_text())
        except ValueError as err:
            raise CacheCorrupted(f"transfer cache {self.path}: manifest.json is unreadable ({err})") from err
        if not isinstance(manifest, dict) or not isinstance(manifest.get("checksums"), dict):
            raise CacheCorrupted(f"transfer cache {self.path}: manifest.json has no checksums")
        self.manifest: dict[str, Any] = manifest
        if verify:
            self.verify()
        self.texts: list[str] = json.loads((self.path / "train_texts.json").read_text())
        self.dev_texts: list[str] = json.loads((self.path / "dev_texts.json").read_text())
        test_file = self.path / "test_texts.json"
        self.test_texts: list[str] = json.loads(test_file.read_text()) if test_file.is_file() else []

    # -- contents ---------------------------------------------------------------------------
    def _array(self, name: str) -> np.ndarray | None:
        file = self.path / f"{name}.npy"
        return np.load(file, mmap_mode="r") if file.exists() else None

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def labeler_fingerprint(self) -> str:
        return self.manifest["labeler"]

    @property
    def label_names(self) -> list[str]:
        return self.manifest["label_names"]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._array("train_labels"))

    @property
    def logits(self) -> np.ndarray:
        return self._array("train_logits")  # type: ignore[return-value]

    @property
    def activations(self) -> np.ndarray | None:
        return self._array("train_activations")

    @property
    def derivatives(self) -> np.ndarray | None:
        """Teacher input derivatives, float16 [N, T, C] (``transfer.derivatives``), or None when not cached."""
        return self._array("train_derivatives")

    @property
    def dev_derivatives(self) -> np.ndarray | None:
        return self._array("dev_derivatives")

    @property
    def test_derivatives(self) -> np.ndarray | None:
        return self._array("test_derivatives")

    @property
    def derivative_info(self) -> dict[str, Any] | None:
        """Form, width (the teacher's max_length) and vocabulary hash of the cached derivatives."""
        return self.manifest.get("derivatives")

    @property
    def dev_labels(self) -> np.ndarray:
        return np.asarray(self._array("dev_labels"))

    @property
    def dev_logits(self) -> np.ndarray:
        return self._array("dev_logits")  # type: ignore[return-value]

    @property
    def dev_activations(self) -> np.ndarray | None:
        return self._array("dev_activations")

    @property
    def test_labels(self) -> np.ndarray | None:
        array = self._array("test_labels")
        return None if array is None else np.asarray(array)

    @property
    def test_logits(self) -> np.ndarray | None:
        """The teacher's test logits (reporting only: the teacher's test score and students' agreement)."""
        return self._array("test_logits")

    @property
    def assets(self) -> Path:
        return self.path / "assets"

    @property
    def tokenizer_dir(self) -> Path:
        return self.assets / "tokenizer"

    def embedding_matrix(self) -> np.ndarray | None:
        """The labeler's word-embedding table (e.g. the teacher's WordPiece matrix), if it has one."""
        file = self.assets / "embeddings.npy"
        return np.load(file) if file.exists() else None

    def __len__(self) -> int:
        return len(self.texts)

    # -- integrity --------------------------------------------------------------------------
    def verify(self) -> None:
        """Recompute every file's sha256 and compare with the manifest (raises CacheCorrupted)."""
        for name, expected in self.manifest["checksums"].items():
            file = self.path / name
            if not file.is_file():
                raise CacheCorrupted(f"transfer cache {self.path}: {name} is missing")
            actual = hash_file(file)
            if actual != expected:
                raise CacheCorrupted(f"transfer cache {self.path}: checksum mismatch in {name}")

    def __repr__(self) -> str:
        return f"TransferCache({self.path}, n={len(self)}, labeler={self.labeler_fingerprint})"


# -- building -------------------------------------------------------------------------------


def directory_checksums(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (assets included), keyed by relative POSIX path.

    Labelling leftovers (chunk files) and the manifest itself are not part of a cache.
    """
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and p.name != "manifest.json" and "_chunk" not in p.name and not p.name.endswith(".lock")
    )
    return {p.relative_to(directory).as_posix(): hash_file(p) for p in files}


LabelFn = Callable[[list[str]], dict[str, np.ndarray]]


def _outputs(labeler: Labeler, derivatives: bool, only_derivatives: bool = False) -> LabelFn:
    """What one batch yields, by array name: logits (+ activations) (+ derivatives padded to the teacher's width)."""
    if not derivatives:

        def plain(batch: list[str]) -> dict[str, np.ndarray]:
            logits, acts = labeler.label_batch(batch)
            return {"logits": logits} | ({"activations": acts} if acts is not None else {})

        return plain
    label = getattr(labeler, "label_batch_with_derivatives", None)
    if label is None:
        raise KDError(f"{type(labeler).__name__} cannot compute input derivatives (no label_batch_with_derivatives)")
    width = int(labeler.derivative_info()["max_length"])  # type: ignore[attr-defined]

    def with_derivatives(batch: list[str]) -> dict[str, np.ndarray]:
        logits, acts, derivs = label(batch)
        padded = np.zeros((len(batch), width, derivs.shape[-1]), dtype=np.float32)
        padded[:, : derivs.shape[1]] = derivs[:, :width]
        if only_derivatives:  # extending a cache: its logits and activations are already there
            return {"derivatives": padded}
        return {"logits": logits, "derivatives": padded} | ({"activations": acts} if acts is not None else {})

    return with_derivatives


def _label_split(
    label: LabelFn,
    lengths: np.ndarray,
    texts: Sequence[str],
    work: Path,
    prefix: str,
    batch_size: int,
    sort: bool,
    progress: bool = True,
) -> list[str]:
    """Label ``texts`` in length-sorted batches, one resumable chunk file at a time.

    Results are scattered back to the original order straight into memory-mapped ``.npy`` files
    in ``work``, so even a transfer set of millions of sentences never has to fit in RAM.
    Returns the names of the arrays written.
    """
    n = len(texts)
    if n == 0:
        raise KDError(f"cannot label an empty {prefix} split")
    order = np.argsort(lengths, kind="stable") if sort else np.arange(n)
    size = chunk_size()
    chunks = [order[i : i + size] for i in range(0, n, size)]
    arrays: dict[str, np.ndarray] = {}
    needed: set[str] | None = None  # the arrays a chunk must hold (known after the first batch)
    bar = tqdm(total=n, desc=f"labelling {prefix}", unit="text", leave=False, disable=not progress)
    for c, idx in enumerate(chunks):
        chunk_file = work / f"{prefix}_chunk{c:05d}.npz"
        got = _load_chunk(chunk_file, idx, needed)
        if got is not None:
            bar.update(len(idx))
        else:
            parts: dict[str, list[np.ndarray]] = {}
            for b in range(0, len(idx), batch_size):
                batch = [texts[i] for i in idx[b : b + batch_size]]
                for name, values in label(batch).items():
                    parts.setdefault(name, []).append(np.asarray(values, dtype=np.float32))
                STATS.batches += 1
                STATS.examples += len(batch)
                bar.update(len(batch))
            got = {name: np.concatenate(values).astype(np.float16) for name, values in parts.items()}
            tmp = chunk_file.with_suffix(".tmp.npz")
            np.savez(tmp, index=idx, **got)
            os.replace(tmp, chunk_file)
        needed = set(got)
        for name, values in got.items():
            if name not in arrays:
                arrays[name] = open_memmap(work / f"{prefix}_{name}.npy", "w+", np.float16, (n, *values.shape[1:]))
            arrays[name][idx] = values
    bar.close()
    for array in arrays.values():
        array.flush()
    names = [f"{prefix}_{name}" for name in arrays]
    del arrays
    return names


def _load_chunk(chunk_file: Path, idx: np.ndarray, needed: set[str] | None) -> dict[str, np.ndarray] | None:
    """A chunk labelled by an earlier (killed) build, if it holds exactly the texts ``idx`` (and ``needed``).

    A resumed build may use another chunk size or ordering (``sort_by_length``), so a chunk is
    reused only when its recorded text indices match; an unreadable chunk is labelled again.
    """
    if not chunk_file.exists():
        return None
    try:
        with np.load(chunk_file) as data:
            if "index" not in data.files or not np.array_equal(data["index"], idx):
                log.info("chunk %s covers other texts (chunk size or order changed); relabelling it", chunk_file.name)
                return None
            got = {name: data[name] for name in data.files if name != "index"}
    except (OSError, ValueError, KeyError, EOFError) as err:
        log.warning("chunk %s is unreadable (%s); relabelling it", chunk_file, err)
        return None
    if not got or any(len(values) != len(idx) for values in got.values()):
        return None
    if needed is not None and set(got) != needed:
        return None
    return got


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link every file of a complete cache but its manifest (cache files are never modified in place)."""
    for file in src.rglob("*"):
        if not file.is_file() or file.name == "manifest.json":
            continue
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)


def _write_cache(
    labeler: Labeler,
    transfer: TransferSet,
    key: str,
    work: Path,
    batch_size: int,
    sort_by_length: bool,
    derivatives: bool = False,
    base: TransferCache | None = None,
    progress: bool = True,
) -> None:
    """Label every split into ``work``; with ``base`` (same texts, same labeler) only the derivatives are computed."""
    log.info(
        "%s %d texts for transfer cache %s (pid %d)",
        "adding input derivatives to" if base is not None else "labelling",
        sum(len(texts) for _, texts, _ in transfer.splits()),
        key,
        os.getpid(),
    )
    STATS.passes += 1
    STATS.builds.append(key)
    names: list[str] = []
    if base is not None:
        _link_tree(base.path, work)
        names += [name for name in base.manifest["shapes"] if not name.endswith("_derivatives")]
    label = _outputs(labeler, derivatives, only_derivatives=base is not None)
    for prefix, texts, labels in transfer.splits():
        names += _label_split(
            label, labeler.text_lengths(texts), texts, work, prefix, batch_size, sort_by_length, progress
        )
        if base is None:
            np.save(work / f"{prefix}_labels.npy", np.asarray(labels, dtype=np.int64))
            names.append(f"{prefix}_labels")
            (work / f"{prefix}_texts.json").write_text(json.dumps(list(texts)))
    for chunk in work.glob("*_chunk*.npz"):  # every split is labelled: the resume points are spent
        chunk.unlink()
    if base is None:
        labeler.write_assets(work / "assets")
    arrays = {name: np.load(work / f"{name}.npy", mmap_mode="r") for name in names}
    checksums = directory_checksums(work)
    manifest = {
        "key": key,
        "format": FORMAT_VERSION,
        "labeler": labeler.fingerprint,
        "data_fingerprint": transfer.fingerprint(),
        "task": transfer.task,
        "label_names": transfer.label_names,
        "transfer": transfer.description,
        "pooling": "mean over non-padding tokens of each hidden state (embeddings output = layer 0)",
        "shapes": {name: list(a.shape) for name, a in arrays.items()},
        "dtypes": {name: str(a.dtype) for name, a in arrays.items()},
        "checksums": checksums,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sorted_batches": sort_by_length,
    }
    if derivatives:
        info = dict(labeler.derivative_info())  # type: ignore[attr-defined]
        manifest["derivatives"] = info | {"extended_from": base.key if base is not None else None}
    del arrays
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _complete(path: Path) -> TransferCache | None:
    """The complete, intact cache at ``path``, or None."""
    if not (path / "manifest.json").is_file():
        return None
    try:
        return TransferCache(path)
    except CacheCorrupted as err:
        log.warning("%s; not extending it", err)
        return None


def get_or_build_cache(
    labeler: Labeler,
    transfer: TransferSet,
    root: str | Path,
    batch_size: int = 128,
    sort_by_length: bool = True,
    lock_timeout: float = -1,
    derivatives: bool = False,
    progress: bool = True,
) -> TransferCache:
    """Return the cache for (labeler, transfer set), labelling only if no complete one exists.

    Safe to call from many processes at once (one labels, the others wait on the lock), and
    after a crash (the partial chunks are reused; a corrupted cache is moved aside and rebuilt).
    ``derivatives``: the cache also holds the labeler's input derivatives (``transfer.derivatives``);
    when the same cache without them exists, it is extended (its files linked, only the
    derivatives computed) instead of labelled again.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(labeler.fingerprint, transfer, derivatives)
    final = root / key
    if (final / "manifest.json").is_file():
        try:
            return TransferCache(final)
        except CacheCorrupted as err:
            log.warning("%s; rebuilding", err)
    with FileLock(str(root / f"{key}.lock"), timeout=lock_timeout):
        if (final / "manifest.json").is_file():
            try:
                return TransferCache(final)
            except CacheCorrupted as err:
                aside = root / f"{key}.corrupt-{time.time_ns()}"
                log.warning("%s; moved to %s and rebuilding", err, aside.name)
                os.replace(final, aside)
        elif final.exists():  # a directory without manifest can only be debris: never trust it
            shutil.rmtree(final)
        work = root / f"{key}.partial"
        work.mkdir(exist_ok=True)
        resumed = len(list(work.glob("*_chunk*.npz")))
        if resumed:
            log.info("resuming cache %s from %d labelled chunks", key, resumed)
        base = _complete(root / cache_key(labeler.fingerprint, transfer)) if derivatives else None
        _write_cache(labeler, transfer, key, work, batch_size, sort_by_length, derivatives, base, progress)
        os.replace(work, final)
    return TransferCache(final)
