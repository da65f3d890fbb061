"""Benchmark 1: a 5-trial study makes exactly one teacher pass over the transfer set.

    python -m benchmarks.bench_cache_reuse [teacher=minilm] [data.limit=2000] [any override]

Runs the study twice in a fresh folder (the second run tops up to 7 trials) and prints the
teacher passes and examples labelled against the size of the transfer set.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from benchmarks._common import isolated_overrides
from studies.cli import quiet_libraries
from studies.config import compose
from studies.run import run_study
from transfer.cache import STATS


def main(argv: list[str]) -> None:
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        base = [*isolated_overrides(Path(tmp)), "teacher=tiny", "data.limit=2000", "student.hparams.epochs=1", *argv]
        STATS.reset()
        first = run_study(compose([*base, "study.n_trials=5"]))
        passes_first, examples_first = STATS.passes, STATS.examples
        second = run_study(compose([*base, "study.n_trials=7"]))
        cfg = compose(base)
        from studies.pipeline import load_configured_task

        task = load_configured_task(cfg)
        transfer_size = len(task.train) + len(task.dev)
        print(f"trials finished: {first.n_finished} then {second.n_finished} (study {first.study_name})")
        print(
            f"teacher passes over the transfer set: {passes_first} in the first run, "
            f"{STATS.passes - passes_first} in the second"
        )
        print(
            f"examples labelled: {STATS.examples} for a transfer set (train+dev) of {transfer_size} "
            f"= {STATS.examples / transfer_size:.2f} labels per example over {second.n_finished} trials"
        )
        assert examples_first == transfer_size and STATS.examples == transfer_size


if __name__ == "__main__":
    main(sys.argv[1:])
