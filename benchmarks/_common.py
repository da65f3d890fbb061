"""Helpers shared by the benchmark scripts: isolated run folders and side-by-side latency."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from studies.evaluate import LATENCY_THREADS, torch_threads

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = os.environ.get("KD_DATA_DIR", str(REPO.parent / "shared" / "data"))


def isolated_overrides(workdir: Path) -> list[str]:
    """Overrides that keep a benchmark's cache, Optuna and MLflow state inside ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return [
        f"data.dir={DATA_DIR}",
        f"cache_dir={workdir / 'cache'}",
        f"study.storage=sqlite:///{workdir / 'optuna.db'}",
        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}",
        "progress=false",
    ]


def side_by_side_latency(
    models: dict[str, Callable[[Sequence[str]], np.ndarray]],
    texts: Sequence[str],
    rounds: int = 8,
    block: int = 25,
    warmup: int = 5,
) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model, measured in alternating blocks of ``block`` calls.

    Alternating spreads machine noise over all models alike; blocks (rather than one call each)
    keep every model's weights as warm in the CPU caches as they would be when serving alone.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch_threads(LATENCY_THREADS):  # the same setting as every latency_ms_b1 in MLflow
        for r in range(rounds):
            for name, predict in models.items():
                for i in range(warmup + block):
                    text = [texts[(r * block + i) % len(texts)]]
                    start = time.perf_counter()
                    predict(text)
                    if i >= warmup:
                        times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}
