"""Fixtures shared by every test file: tiny data, a tiny fine-tuned teacher, its transfer cache, fast study overrides.

Names here are a stable interface for all test files; keep them (and their meaning) unchanged:

- ``tiny_data_dir`` (session): a data folder holding ``sst2/train.tsv`` (120 rows) and ``sst2/dev.tsv``
  (40 rows) of short synthetic sentences whose label is learnable (positive vs negative words).
- ``make_tiny_overrides`` (session): a function ``(root) -> list[str]`` of Hydra overrides that make a
  study fast and isolated under ``root`` (usable from module-scoped fixtures).
- ``mlflow_template_db`` (session): an empty migrated MLflow SQLite file that the overrides copy into
  ``root`` (so each study does not pay MLflow's ~10 s schema migration).
- ``tiny_overrides`` (function): ``make_tiny_overrides(tmp_path)``; also ``chdir``s into ``tmp_path`` so
  MLflow's cwd-relative artifact folder (``mlruns/``) never lands in the repository.
- ``tiny_task`` (session): the ``Task`` loaded from ``tiny_data_dir``.
- ``tiny_finetune_config`` (session): the ``FineTuneConfig`` of the tiny teacher.
- ``tiny_teacher`` (session): a ``teachers.model.Teacher`` fine-tuned on ``tiny_task`` (a few seconds).
- ``tiny_cache`` (session): the ``TransferCache`` the tiny teacher labelled (logits + activations), for
  fitting students quickly. Treat it as read-only: it is shared by the whole session.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Nothing in the test-suite may touch the network; the tiny teacher and the packaged MiniLM are local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: on a small shared machine, tiny models train ~10x faster than with several."""
    import torch

    torch.set_num_threads(1)


POSITIVE = ["great", "wonderful", "lovely", "brilliant", "superb", "delightful", "charming", "excellent"]
NEGATIVE = ["awful", "terrible", "boring", "dreadful", "dull", "horrible", "clumsy", "tedious"]
NEUTRAL = ["movie", "film", "plot", "story", "acting", "cast", "ending", "script", "music", "scene"]
OPENERS = ["the", "this", "a", "that"]
TINY_TRAIN_ROWS = 120
TINY_DEV_ROWS = 40


def tiny_sentences(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` (sentence, label) pairs: label 1 iff the sentence carries a positive word (balanced classes)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        sentiment = rng.choice(POSITIVE if label else NEGATIVE)
        extra = [rng.choice(NEUTRAL) for _ in range(rng.randint(0, 4))]
        words = [rng.choice(OPENERS), rng.choice(NEUTRAL), "was", sentiment, *extra]
        rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


def write_sst2(folder: Path, train: list[tuple[str, int]], dev: list[tuple[str, int]]) -> Path:
    """Write ``folder/sst2/{train,dev}.tsv`` in GLUE SST-2 format; returns ``folder``."""
    sst2 = folder / "sst2"
    sst2.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.tsv", train), ("dev.tsv", dev)):
        body = "".join(f"{text}\t{label}\n" for text, label in rows)
        (sst2 / name).write_text("sentence\tlabel\n" + body, encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with ``sst2/train.tsv`` (120 rows) and ``sst2/dev.tsv`` (40 rows), fixed seed."""
    root = tmp_path_factory.mktemp("data")
    return write_sst2(root, tiny_sentences(TINY_TRAIN_ROWS, seed=1), tiny_sentences(TINY_DEV_ROWS, seed=2))


def overrides_for(root: Path, data_dir: Path) -> list[str]:
    """Hydra overrides for a fast, isolated study whose every file (cache, Optuna, MLflow) lives under ``root``."""
    root = Path(root)
    return [
        "teacher=tiny",
        f"data.dir={data_dir}",
        f"cache_dir={root / 'cache'}",
        f"study.storage=sqlite:///{root / 'optuna.db'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "progress=false",
        "tracking.latency_samples=5",
        "student.hparams.epochs=1",
    ]


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite database (creating one takes ~10 s; copying it, nothing)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow_template")
    path = folder / "mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def make_tiny_overrides(tiny_data_dir: Path, mlflow_template_db: Path) -> Callable[[Path], list[str]]:
    """``make_tiny_overrides(root)``: the fast study overrides with caches and databases under ``root``.

    For module-scoped fixtures (which cannot use ``tmp_path``). ``root/mlflow.db`` starts as a copy of
    ``mlflow_template_db`` (unless it exists). Remember to run the study with the working directory
    inside ``root`` (MLflow writes ``mlruns/`` relative to the cwd).
    """

    def make(root: Path) -> list[str]:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "mlflow.db").exists():
            shutil.copyfile(mlflow_template_db, root / "mlflow.db")
        return overrides_for(root, tiny_data_dir)

    return make


@pytest.fixture
def tiny_overrides(
    tmp_path: Path, make_tiny_overrides: Callable[[Path], list[str]], monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """Overrides for a fast, isolated study under ``tmp_path``; the cwd is ``tmp_path`` for the test."""
    monkeypatch.chdir(tmp_path)
    return make_tiny_overrides(tmp_path)


@pytest.fixture(scope="session")
def tiny_task(tiny_data_dir: Path):
    """The tiny SST-2 ``Task`` (120 train / 40 dev examples)."""
    from transfer.tasks import load_task

    return load_task("sst2", str(tiny_data_dir))


@pytest.fixture(scope="session")
def tiny_finetune_config():
    """``FineTuneConfig`` of the tiny teacher: a 2-layer, 32-wide BERT, a few quick epochs."""
    from teachers.finetune import FineTuneConfig

    return FineTuneConfig(
        epochs=6.0,  # 6: the tiny train set (107 rows) needs 4 epochs before its loss moves
        lr=1e-2,
        batch_size=16,
        max_length=32,
        warmup_ratio=0.0,
        weight_decay=0.0,
        freeze_embeddings=False,
        seed=0,
        tiny={"layers": 2, "hidden": 32, "heads": 2, "intermediate": 64, "vocab_size": 200},
    )


@pytest.fixture(scope="session")
def tiny_teacher_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache root (``<root>/teachers``, ``<root>/transfer``) of the session's tiny teacher."""
    return tmp_path_factory.mktemp("tiny_teacher")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_task, tiny_finetune_config, tiny_teacher_root: Path):
    """A tiny BERT teacher fine-tuned on ``tiny_task`` (``teachers.model.Teacher``, CPU)."""
    from teachers.finetune import get_teacher

    return get_teacher("tiny", tiny_task, tiny_finetune_config, tiny_teacher_root, device="cpu")


@pytest.fixture(scope="session")
def tiny_cache(tiny_teacher, tiny_task, tiny_teacher_root: Path):
    """The tiny teacher's ``TransferCache`` of ``tiny_task`` (train + dev logits, activations, assets)."""
    from transfer.cache import get_or_build_cache
    from transfer.transfer_set import make_transfer_set

    return get_or_build_cache(tiny_teacher, make_transfer_set(tiny_task), tiny_teacher_root / "transfer")


@pytest.fixture
def fresh_stats() -> Iterator[object]:
    """``transfer.cache.STATS`` reset to zero for the test (restored afterwards)."""
    from transfer.cache import STATS

    saved = (STATS.passes, STATS.examples, STATS.batches, list(STATS.builds))
    STATS.reset()
    yield STATS
    STATS.passes, STATS.examples, STATS.batches = saved[:3]
    STATS.builds[:] = saved[3]
