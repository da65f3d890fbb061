"""A student's share of the teacher as the augmented transfer set grows (Tang et al. 2019's rules).

    python -m benchmarks.bench_transfer_size                                  # BiLSTM, SST-2 and CoLA, 1x..8x
    python -m benchmarks.bench_transfer_size --tasks cola --sizes 1,2,4 --seeds 2 -- transfer.train_limit=2000

The largest transfer set (the training sentences plus ``max(sizes) - 1`` synthetic sentences
per sentence: masking, same-POS replacement, n-gram sampling) is labelled once; every smaller
size is a row subset of it (``transfer/subset.py``), so no sentence is labelled twice. One
student configuration (the student's defaults, fixed epochs) is trained per size and seed and
scored on test; the teacher is the same throughout. Each (task, size, seed) result is appended
to ``transfer_size.jsonl`` as soon as it exists, so a rerun continues where it stopped.

Writes ``benchmarks/results/transfer_size.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import REPO, split_overrides

OUT_DIR = REPO / "benchmarks" / "results"
FRESH_SEEDS = 1000  # like studies.compare: seeds no search trained with


def subset_rows(prep: Any, size: int) -> list[int]:
    """Rows of the largest cache that make the ``size``× transfer set: the originals, then their first draws."""
    from transfer.augment import AugmentConfig
    from transfer.subset import rows_of
    from transfer.transfer_set import make_transfer_set

    limit = prep.cfg.transfer.get("train_limit")
    task = replace(prep.task, train=prep.task.train.limit(int(limit))) if limit else prep.task
    originals = list(range(len(task.train.texts)))  # the transfer set starts with the training split, in order
    if size == 1:
        return originals
    augment = AugmentConfig.from_mapping(
        {**dict(prep.cfg.transfer.augment), "n": size - 1}, mask_token=prep.teacher.tokenizer.mask_token
    )
    smaller = make_transfer_set(task, augment=augment, vocab_source=prep.teacher)
    synthetic = smaller.texts[len(originals) :]
    return originals + rows_of(prep.cache, synthetic)


def load_done(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run(args: argparse.Namespace, extra: Sequence[str], out_dir: Path) -> list[dict[str, Any]]:
    from studies.config import compose
    from studies.measure import fit_and_measure
    from studies.pipeline import prepare
    from transfer.subset import TransferSubset

    log_path = out_dir / "transfer_size.jsonl"
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    hparams = json.loads(args.hparams) if args.hparams else {}
    # only results of this very set-up count as done (a rerun with other settings starts afresh)
    setup = json.dumps(
        {
            "student": args.student,
            "epochs": args.epochs,
            "hparams": hparams,
            "largest": max(sizes),
            "overrides": list(extra),
        },
        sort_keys=True,
    )
    done = [r for r in load_done(log_path) if r.get("setup") == setup]
    seen = {(r["task"], r["size"], r["seed"]) for r in done}
    for task in [t for t in args.tasks.split(",") if t]:
        overrides = [f"task={task}", f"student={args.student}", f"transfer.augment.n={max(sizes) - 1}", *extra]
        prep = prepare(compose(["progress=false", *overrides]))  # the largest set, labelled once (cached)
        for size in sizes:
            todo = [s for s in range(FRESH_SEEDS, FRESH_SEEDS + args.seeds) if (task, size, s) not in seen]
            if not todo:
                continue
            subset = TransferSubset(prep.cache, subset_rows(prep, size))
            sub_prep = replace(prep, cache=subset)
            for seed in todo:
                config = {"epochs": args.epochs, **hparams, "seed": seed}
                measured = fit_and_measure(sub_prep, args.student, config)
                m = measured.metrics
                row = {
                    "task": task,
                    "size": size,
                    "seed": seed,
                    "sentences": len(subset),
                    "metric": prep.report_metric,
                    "test_score": m[prep.report_metric],
                    "teacher_test_score": prep.teacher_metrics[prep.report_metric],
                    "share_of_teacher": m["share_of_teacher"],
                    "dev_share_of_teacher": m["dev_share_of_teacher"],
                    "test_agreement": m["test_agreement"],
                    "train_seconds": m["train_seconds"],
                    "student": args.student,
                    "hparams": config,
                    "setup": setup,
                }
                print(
                    f"[{task}] {size}x ({len(subset):,} sentences) seed {seed}: "
                    f"{row['metric']}={row['test_score']:.4f}, {100 * row['share_of_teacher']:.1f}% of the teacher",
                    flush=True,
                )
                with log_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                done.append(row)
    return done


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], int(row["size"]))].append(row)
    table = []
    for (task, size), group in sorted(groups.items()):
        shares = np.array([100 * r["share_of_teacher"] for r in group])
        scores = np.array([r["test_score"] for r in group])
        table.append(
            {
                "task": task,
                "size": size,
                "sentences": group[0]["sentences"],
                "seeds": len(group),
                "metric": group[0]["metric"],
                "test_mean": float(scores.mean()),
                "test_sd": float(scores.std(ddof=1)) if len(group) > 1 else 0.0,
                "share_mean": float(shares.mean()),
                "share_sd": float(shares.std(ddof=1)) if len(group) > 1 else 0.0,
                "dev_share_mean": float(np.mean([100 * r["dev_share_of_teacher"] for r in group])),
                "train_seconds": float(np.mean([r["train_seconds"] for r in group])),
            }
        )
    return table


def trend_lines(table: Sequence[dict[str, Any]]) -> list[str]:
    """One computed sentence per task: the share at the smallest and largest size, and the size dev prefers.

    The size a table should use is chosen on dev (the "% of teacher (dev)" column), never on test.
    """
    lines = []
    for task in sorted({r["task"] for r in table}):
        rows = sorted((r for r in table if r["task"] == task), key=lambda r: r["size"])
        first, last = rows[0], rows[-1]
        best = max(rows, key=lambda r: r["dev_share_mean"])
        lines.append(
            f"- {task}: {first['share_mean']:.1f} ± {first['share_sd']:.1f} % of the teacher on test at "
            f"{first['size']}×, {last['share_mean']:.1f} ± {last['share_sd']:.1f} % at {last['size']}×; "
            f"the size with the best dev share: {best['size']}× ({best['dev_share_mean']:.1f} %)."
        )
    return lines


def write_outputs(table: Sequence[dict[str, Any]], out_dir: Path, command: str) -> dict[str, Path]:
    from studies.report import curves_png

    md = out_dir / "transfer_size.md"
    lines = [
        "| task | transfer set | sentences | seeds | test score | % of teacher (test) | % of teacher (dev) | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['task']} | {r['size']}× | {r['sentences']:,} | {r['seeds']} "
            f"| {r['test_mean']:.4f} ± {r['test_sd']:.4f} | {r['share_mean']:.1f} ± {r['share_sd']:.1f} "
            f"| {r['dev_share_mean']:.1f} | {r['train_seconds']:.0f} |"
        )
    metric = table[0]["metric"] if table else ""
    lines += ["", f"Made by `{command}`; `{metric}` on test, mean ± sd over seeds.", "", *trend_lines(table)]
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path_csv = out_dir / "transfer_size.csv"
    with path_csv.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["task"])
        writer.writeheader()
        writer.writerows(table)
    series = {
        task: [(float(r["size"]), r["share_mean"], r["share_sd"]) for r in table if r["task"] == task]
        for task in sorted({r["task"] for r in table})
    }
    png = curves_png(
        out_dir / "transfer_size.png",
        series,
        "transfer set size (× the training sentences)",
        "student test score, % of the teacher's",
        "Share of the teacher vs augmented transfer-set size",
    )
    return {"md": md, "csv": path_csv, "png": png}


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, extra = split_overrides(list(argv))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sst2,cola")
    parser.add_argument("--sizes", default="1,2,4,8", help="multiples of the training sentences")
    parser.add_argument("--student", default="bilstm")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="the same number of epochs at every size")
    parser.add_argument("--hparams", default="", help="JSON of fixed hyper-parameters, e.g. '{\"hidden_size\": 256}'")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    return parser.parse_args(argv), extra


def main(argv: Sequence[str]) -> dict[str, Path]:
    from studies.cli import quiet_libraries

    quiet_libraries()
    args, extra = parse(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = run(args, extra, out_dir)
    command = "python -m benchmarks.bench_transfer_size " + " ".join(argv)
    files = write_outputs(summarise(rows), out_dir, command.strip())
    print(files["md"].read_text(encoding="utf-8"))
    return files


if __name__ == "__main__":
    main(sys.argv[1:])
