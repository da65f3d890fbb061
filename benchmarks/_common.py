"""Helpers shared by the benchmark scripts: isolated run folders and side-by-side latency."""

from __future__ import annotations

import os
from pathlib import Path

from studies.evaluate import side_by_side_latency

__all__ = ["DATA_DIR", "REPO", "isolated_overrides", "side_by_side_latency", "split_overrides"]

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


def split_overrides(argv: list[str] | tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``[own arguments] -- [Hydra overrides]``: the benchmark's own flags, and overrides passed through."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]
