"""The results-table benchmark end to end on the tiny teacher, and the README's include blocks."""

from __future__ import annotations

import csv
import json
import re
import time
from pathlib import Path

import pytest

from benchmarks import bench_tasks
from benchmarks.readme import fill
from benchmarks.task_results import find_row, model_key
from studies.report import Stat


def test_bench_tasks_writes_the_table_csv_and_plots(tiny_overrides: list[str], tmp_path: Path) -> None:
    out = tmp_path / "results" / "tasks.md"
    overrides = [o for o in tiny_overrides if not o.startswith("student.hparams.epochs")]
    argv = ["--tasks", "sst2", "--students", "tree,bilstm", "--trials", "1", "--seeds", "2", "--epochs", "1"]
    argv += ["--teacher-lrs", "0.001,0.01", "--ledger", str(tmp_path / "ledger.json")]
    results = bench_tasks.main([*argv, "--out", str(out), "--", *overrides])
    text = out.read_text(encoding="utf-8")
    rows = list(csv.DictReader(out.with_suffix(".csv").open(encoding="utf-8")))
    assert [r["model"] for r in rows] == ["teacher", "bilstm", "tree"]
    assert all(r["n_seeds"] == "2" for r in rows[1:])
    assert all(float(r["pct_of_teacher_dev"]) > 0 for r in rows) and rows[0]["pct_of_teacher_dev"] == "100.0"
    assert "| teacher |" in text and "| bilstm |" in text and "| tree |" in text
    assert "SST-2 test_accuracy" in text and "Targets:" in text and "SST-2 bilstm ≥ 97 %" in text
    assert (out.parent / "pareto_sst2.png").stat().st_size > 0 and (out.parent / "pareto_sst2.html").is_file()
    assert results[0].minutes > 0
    assert "lr picked on dev: lr 0.001: dev" in text and "(dev per epoch " in text
    assert (
        "Not run (outside this budget, `--students`): SST-2: cnn, bert, lgbm, forest, chain." in text
    )  # the teacher recipe was chosen on dev, and says so
    assert set(results[0].picked) == {"bilstm", "tree"}
    assert all(pick["this_run"] for pick in results[0].picked.values())  # no other study of these students
    assert re.search(r"- SST-2 bilstm: trial \d+ of `sst2-[^`]+` \(dev [\d.]+\)\n", text)
    # the BiLSTM's speed-up was timed on its folded form and says so; the tree's on its own model
    assert re.search(r"\| SST-2 \| bilstm \|[^\n]*× † \|", text) and bench_tasks.SERVING_NOTE in text
    assert re.search(r"\| SST-2 \| tree \|[^\n]*\d× \|", text)
    # a rerun trains nothing new: studies are full and the seed runs are reused
    again = bench_tasks.main([*argv, "--out", str(out), "--", *overrides])
    assert [r.score.mean for r in again[0].rows] == [r.score.mean for r in results[0].rows]
    assert again[0].minutes > results[0].minutes  # the ledger adds the second sitting to the first
    # an ablation: a fixed configuration is compared on its own study, not on the earlier study's best trial
    fixed = ["--", *overrides, "sst2.tree:student.hparams.max_depth=1"]
    tree_only = [*argv[:2], *argv[4:], "--students", "tree"]
    (mixed,) = bench_tasks.main([*tree_only, "--out", str(tmp_path / "mixed" / "tasks.md"), *fixed])
    assert not mixed.picked["tree"]["this_run"]  # without the flag the earlier study, better on dev, supplies it
    ablation = ["--only-searched", "--out", str(tmp_path / "ablation" / "tasks.md")]
    (ablated,) = bench_tasks.main([*tree_only, *ablation, *fixed])
    pick = ablated.picked["tree"]
    assert pick["this_run"] and pick["study"] != results[0].picked["tree"]["study"]
    assert "rows from this run's studies only (`--only-searched`)" in ablated.budget


def test_task_prefixed_overrides_apply_to_their_task_only() -> None:
    extra = ["seed=1", "sara:teacher.epochs=15", "sst2:transfer.augment.n=0", "tracking.uri=http://h:5000"]
    assert bench_tasks.task_overrides(extra, "sara") == ["seed=1", "teacher.epochs=15", "tracking.uri=http://h:5000"]
    assert bench_tasks.task_overrides(extra, "trec") == ["seed=1", "tracking.uri=http://h:5000"]
    sst2 = bench_tasks.task_overrides(extra, "sst2")
    merged = bench_tasks.merge_overrides(["task=sst2", "transfer.augment.n=3"], sst2)
    assert merged == ["task=sst2", "seed=1", "transfer.augment.n=0", "tracking.uri=http://h:5000"]
    with pytest.raises(SystemExit, match="unknown scope 'sst3'"):
        bench_tasks.task_overrides(["sst3:seed=1"], "sst2")


def test_student_scoped_overrides_reach_that_students_study_only() -> None:
    extra = ["seed=1", "sst2.bert:student.hparams.num_layers=1", "bert:student.hparams.dropout=0", "cola:seed=2"]
    assert bench_tasks.task_overrides(extra, "sst2") == ["seed=1"]  # the setup every student shares
    assert bench_tasks.task_overrides(extra, "cola") == ["seed=2"]
    assert bench_tasks.student_overrides(extra, "sst2", "bert") == [
        "student.hparams.num_layers=1",
        "student.hparams.dropout=0",
    ]
    assert bench_tasks.student_overrides(extra, "trec", "bert") == ["student.hparams.dropout=0"]
    assert bench_tasks.student_overrides(extra, "sst2", "bilstm") == []
    with pytest.raises(SystemExit, match=r"unknown scope 'sst2\.bort'"):
        bench_tasks.student_overrides(["sst2.bort:seed=1"], "sst2", "bert")
    args, _ = bench_tasks.parse([])
    assert "per-student overrides: bert: `student.hparams.num_layers=1`" in bench_tasks.describe_budget(
        args, ["task=sst2"], {"bert": ["student.hparams.num_layers=1"], "cnn": []}
    )
    constrained, _ = bench_tasks.parse(["--min-speedup", "10"])
    assert "constrained to ≥ 10× the teacher's speed" in bench_tasks.describe_budget(constrained, ["task=sst2"])


def test_ledger_adds_up_sittings_per_task_setup(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    assert bench_tasks.add_to_ledger(ledger, "trec", ["task=trec", "b=1"], 2.0) == 2.0
    assert bench_tasks.add_to_ledger(ledger, "trec", ["b=1", "task=trec"], 3.0) == 5.0  # same setup, any order
    assert bench_tasks.add_to_ledger(ledger, "trec", ["task=trec", "b=2"], 1.0) == 1.0  # another setup


def test_a_re_fine_tuned_teacher_starts_its_own_total_and_takes_over_the_waiting_time(tmp_path: Path) -> None:
    """Same overrides, another teacher (say, another machine's arithmetic): its minutes are not the old rows'."""
    ledger = tmp_path / "ledger.json"
    old = {"key": "k", "dev_scores": {"accuracy": 0.93}, "epochs_scored": [{"epoch": 1.0, "dev_score": 0.93}]}
    new = {**old, "dev_scores": {"accuracy": 0.94}, "lr_choice": "not part of its identity"}
    setup = ["task=trec", "b=1"]
    assert bench_tasks.add_to_ledger(ledger, "trec", setup, 10.0, old) == 10.0
    assert bench_tasks.add_to_ledger(ledger, "trec", setup, 2.0) == 2.0  # a sitting killed while fine-tuning
    assert bench_tasks.add_to_ledger(ledger, "trec", ["task=trec"], 1.0) == 1.0  # … before its lr was picked
    total = bench_tasks.add_to_ledger(ledger, "trec", setup, 0.5, new, absorb=[["task=trec"], setup])
    assert total == 3.5  # its own half minute and the waiting time: not the old teacher's 10
    stored = json.loads(ledger.read_text(encoding="utf-8"))
    assert sorted(e["minutes"] for e in stored.values()) == [3.5, 10.0]  # nothing is left waiting
    assert {e["teacher"]["dev_scores"]["accuracy"] for e in stored.values()} == {0.93, 0.94}
    assert bench_tasks.add_to_ledger(ledger, "trec", setup, 1.0, {**old, "lr_choice": "x"}) == 11.0


def test_readme_blocks_are_filled_from_their_files(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "t.md").write_text("| a |\n|---|\n| 1 |\n", encoding="utf-8")
    text = (
        "intro\n<!-- include: r/t.md -->\nold figures\n<!-- end include -->\n"
        "<!-- include: r/none.md -->\nx\n<!-- end include -->\n"
    )
    filled, missing = fill(text, tmp_path)
    assert "| 1 |" in filled and "old figures" not in filled
    assert missing == ["r/none.md"] and "x\n<!-- end include -->" in filled


def test_budgets_can_differ_per_task() -> None:
    assert bench_tasks.per_task("3", "sst2") == 3
    assert bench_tasks.per_task("3,sst2=1", "sst2") == 1
    assert bench_tasks.per_task("3,sst2=1", "trec") == 3
    assert bench_tasks.per_task("sst2=1,4", "cola") == 4
    with pytest.raises(SystemExit, match="no value for trec"):
        bench_tasks.per_task("sst2=1", "trec")
    assert bench_tasks.per_task("10,sst2=3,bert=2", "sst2", "bert") == 2  # the student's value wins
    assert bench_tasks.per_task("10,sst2=3,bert=2", "sst2", "cnn") == 3
    with pytest.raises(SystemExit, match="'sts2' is neither a task nor a student"):
        bench_tasks.per_task("3,sts2=1", "trec")
    with pytest.raises(SystemExit, match="not a whole number"):
        bench_tasks.per_task("three", "trec")


def test_a_chains_links_get_their_own_types_epochs() -> None:
    common = ["task=sara"]
    assert bench_tasks.epoch_overrides("10,bert=2", "sara", "chain", common) == [
        "student.hparams.link0.epochs=2",  # the BERT assistant: the transformer budget
        "student.hparams.link1.epochs=10",  # the BiLSTM it teaches: the task's
    ]
    assert bench_tasks.epoch_overrides("10,sara=0,bert=2", "sara", "chain", common) == [
        "student.hparams.link0.epochs=2"  # 0: the BiLSTM link's epochs are searched
    ]
    assert bench_tasks.epoch_overrides("10,bert=2,chain=3", "sara", "chain", common) == ["student.hparams.epochs=3"]
    links = [*common, "student.links=[bilstm,cnn]"]
    assert bench_tasks.epoch_overrides("10,bilstm=4", "sara", "chain", links) == [
        "student.hparams.link0.epochs=4",
        "student.hparams.link1.epochs=10",
    ]
    assert bench_tasks.epoch_overrides("10,bert=2", "sara", "bert", common) == ["student.hparams.epochs=2"]
    assert bench_tasks.epoch_overrides("10", "sara", "lgbm", common) == []


def test_teacher_learning_rates_can_be_chosen_per_task() -> None:
    assert bench_tasks.teacher_lrs("5e-5,1e-4", "trec") == [5e-5, 1e-4]
    assert bench_tasks.teacher_lrs("sara=1e-4,sara=2e-4", "sara") == [1e-4, 2e-4]
    assert bench_tasks.teacher_lrs("sara=1e-4,sara=2e-4", "sst2") == []  # the teacher config's own lr
    assert bench_tasks.teacher_lrs("1e-4,cola=3e-4", "cola") == [3e-4]
    with pytest.raises(SystemExit, match="not a learning rate"):
        bench_tasks.teacher_lrs("fast", "sst2")


def test_students_can_be_added_for_one_task() -> None:
    spec = "bilstm,tree,trec=bert,trec=chain"
    assert bench_tasks.task_students(spec, "trec") == ["bilstm", "tree", "bert", "chain"]
    assert bench_tasks.task_students(spec, "sst2") == ["bilstm", "tree"]
    with pytest.raises(SystemExit, match="unknown student 'lstm'"):
        bench_tasks.task_students("lstm", "sst2")


def test_the_default_budget_resolves_for_every_task_and_user_overrides_win() -> None:
    args, extra = bench_tasks.parse(["--", "sara:teacher.epochs=20"])
    assert bench_tasks.task_overrides(extra, "sara") == ["teacher.epochs=20"]  # the default 15 is replaced
    assert bench_tasks.task_overrides(extra, "cola") == ["teacher.epochs=8"]
    assert all(set(bench_tasks.task_students(args.students, t)) == set(bench_tasks.STUDENTS) for t in bench_tasks.TASKS)
    assert bench_tasks.student_overrides(extra, "sst2", "bert") == ["student.hparams.num_layers=1"]  # ≤ 1/4 bound
    assert bench_tasks.student_overrides(extra, "sara", "bert") == []
    for task in bench_tasks.TASKS:
        assert bench_tasks.per_task(args.trials, task, "bilstm") >= 1
        assert bench_tasks.per_task(args.transfer_size, task) >= 1
    assert bench_tasks.parse(["--no-default-overrides"])[1] == []


def test_an_interrupted_task_still_adds_its_time_to_the_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        time.sleep(0.05)
        raise KeyboardInterrupt

    record = {"key": "k", "dev_scores": {"accuracy": 0.9}, "epochs_scored": []}
    monkeypatch.setattr(bench_tasks, "task_teacher", interrupted)  # killed while the teacher is fine-tuned
    args, extra = bench_tasks.parse(["--ledger", str(tmp_path / "ledger.json"), "--teacher-lrs", ""])
    with pytest.raises(KeyboardInterrupt):
        bench_tasks.run_task("trec", ["tree"], args, extra, tmp_path)
    (waiting,) = json.loads((tmp_path / "ledger.json").read_text(encoding="utf-8")).values()
    assert waiting["task"] == "trec" and waiting["minutes"] > 0.05 / 60 * 0.9 and "teacher" not in waiting
    # the next sitting identifies the teacher, then is killed mid-study: all of it lands on that teacher
    monkeypatch.setattr(bench_tasks, "task_teacher", lambda common: dict(record))
    monkeypatch.setattr(bench_tasks, "_study_and_compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_tasks.run_task("trec", ["tree"], args, extra, tmp_path)
    (entry,) = json.loads((tmp_path / "ledger.json").read_text(encoding="utf-8")).values()
    assert entry["teacher"]["key"] == "k" and entry["minutes"] > waiting["minutes"] + 0.05 / 60 * 0.9


def _row(task: str, model: str, score: float, speedup: float = 9.5) -> bench_tasks.Row:
    stat = Stat(score, 0.01, 3)
    return bench_tasks.Row(task, model, "test_accuracy", stat, Stat(95.0, 1.0, 3), stat, 1e6, 1e5, speedup, 12.0)


def _result(task: str, score: float) -> bench_tasks.TaskResult:
    return bench_tasks.TaskResult(
        task, [_row(task, "bilstm", score)], {}, 3.0, {"chosen_epoch": 2.0}, {"png": Path("p.png")}, ["bilstm"],
        {"bilstm": True}, budget="b", command=f"python -m benchmarks.bench_tasks --tasks {task}",
    )  # fmt: skip


def _run(
    students: list[str], teacher_dev: float, command: str, setup: tuple[str, ...] = (), minutes: float = 5.0
) -> bench_tasks.TaskResult:
    rows = [_row("sst2", "teacher (minilm)", 0.9, 1.0), *(_row("sst2", s, 0.85) for s in students)]
    record = {"key": "t1", "dev_scores": {"accuracy": teacher_dev}, "epochs_scored": []}
    setup_ = sorted(["task=sst2", *setup])
    return bench_tasks.TaskResult(
        "sst2", rows, {}, minutes, record, {}, students, dict.fromkeys(students, True),
        budget=f"budget of {command}", command=command, setup=setup_,
        minutes_by_setup={" ".join(setup_): minutes},
    )  # fmt: skip


def test_a_run_of_some_students_joins_the_stored_rows_only_against_the_same_teacher(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    bench_tasks.merge_results(path, [_run(["bilstm", "cnn"], 0.93, "first")])
    (table,) = bench_tasks.merge_results(path, [_run(["bert"], 0.93, "second")])
    assert [r.model for r in table.rows] == ["teacher (minilm)", "bilstm", "cnn", "bert"]
    assert table.students == ["bilstm", "cnn", "bert"] and table.defaults_best == dict.fromkeys(table.students, True)
    assert table.earlier == [
        {"models": ["bilstm", "cnn"], "budget": "budget of first", "command": "first", "setup": ["task=sst2"]}
    ]
    assert table.minutes == 5.0  # one setup: its ledger total, which holds both sittings
    text = bench_tasks.render([table])
    assert "- SST-2 (bilstm, cnn): budget of first. Made by `first`." in text
    assert "- SST-2 (bert): budget of second. Made by `second`." in text
    # a rerun of bilstm: its row is replaced, and cnn's stays with the first run
    (table,) = bench_tasks.merge_results(path, [_run(["bilstm"], 0.93, "third")])
    assert [r.model for r in table.rows] == ["teacher (minilm)", "bilstm", "cnn", "bert"]
    assert [(e["models"], e["command"]) for e in table.earlier] == [(["cnn"], "first"), (["bert"], "second")]
    # another teacher (here: another dev score) cannot share the column: the new run stands alone
    (table,) = bench_tasks.merge_results(path, [_run(["bert"], 0.94, "fourth")])
    assert [r.model for r in table.rows] == ["teacher (minilm)", "bert"] and table.earlier == []


def test_a_later_run_naming_the_kept_learning_rate_keeps_the_stored_pick(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    first = _run(["bilstm"], 0.93, "first")
    first.teacher_record["lr_choice"] = "lr 5e-05: dev 0.9200, lr 0.0001: dev 0.9300"
    bench_tasks.merge_results(path, [first])
    (table,) = bench_tasks.merge_results(path, [_run(["bert"], 0.93, "second")])  # no pick of its own
    assert table.teacher_record["lr_choice"] == first.teacher_record["lr_choice"]
    assert "lr picked on dev: lr 5e-05: dev 0.9200" in bench_tasks.render([table])
    own = _run(["cnn"], 0.93, "third")
    own.teacher_record["lr_choice"] = "lr 0.0001: dev 0.9300, lr 0.0002: dev 0.9100"
    (table,) = bench_tasks.merge_results(path, [own])  # a pick of its own wins
    assert table.teacher_record["lr_choice"] == own.teacher_record["lr_choice"]


def test_runs_that_differ_in_transfer_set_size_share_the_table_and_add_their_minutes(tmp_path: Path) -> None:
    """The transfer set is the students' budget: a 16x run of two students joins the 4x rows of the same teacher."""
    path = tmp_path / "tasks.json"
    four, sixteen = ("transfer.augment.n=3",), ("transfer.augment.n=15",)
    bench_tasks.merge_results(path, [_run(["bilstm", "cnn", "lgbm"], 0.93, "at 4x", four, minutes=30.0)])
    (table,) = bench_tasks.merge_results(path, [_run(["bilstm", "cnn"], 0.93, "at 16x", sixteen, minutes=20.0)])
    assert [r.model for r in table.rows] == ["teacher (minilm)", "bilstm", "cnn", "lgbm"]
    assert [(e["models"], e["command"], e["setup"]) for e in table.earlier] == [
        (["lgbm"], "at 4x", ["task=sst2", "transfer.augment.n=3"])
    ]
    assert table.minutes == 50.0  # both setups still have rows: both ledger totals count
    assert "- SST-2 (lgbm): budget of at 4x." in bench_tasks.render([table])
    # a later sitting of the 16x setup: its ledger total (which holds the first 20 minutes) replaces that setup's
    (table,) = bench_tasks.merge_results(path, [_run(["cnn"], 0.93, "at 16x again", sixteen, minutes=26.0)])
    assert table.minutes == 56.0
    # another teacher recipe is another teacher, whatever the transfer set: the new run stands alone
    (table,) = bench_tasks.merge_results(path, [_run(["cnn"], 0.93, "other lr", ("teacher.lr=5e-05",), minutes=7.0)])
    assert [r.model for r in table.rows] == ["teacher (minilm)", "cnn"] and table.minutes == 7.0


def test_a_setup_whose_rows_are_all_replaced_no_longer_counts(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    bench_tasks.merge_results(path, [_run(["bilstm", "cnn"], 0.93, "at 4x", ("transfer.augment.n=3",), 30.0)])
    bench_tasks.merge_results(path, [_run(["bilstm"], 0.93, "at 16x", ("transfer.augment.n=15",), 20.0)])
    (table,) = bench_tasks.merge_results(path, [_run(["cnn"], 0.93, "cnn at 16x", ("transfer.augment.n=15",), 25.0)])
    assert [e["command"] for e in table.earlier] == ["at 16x"] and table.minutes == 25.0


def test_the_pareto_plot_is_drawn_from_the_tables_rows(tmp_path: Path) -> None:
    result = _run(["bilstm", "cnn"], 0.93, "first")
    files = bench_tasks.draw_pareto(result, tmp_path)
    assert files["png"].stat().st_size > 10_000 and "bilstm" in files["html"].read_text(encoding="utf-8")


def test_the_ledger_lives_beside_the_table(tmp_path: Path) -> None:
    args, _ = bench_tasks.parse(["--out", str(tmp_path / "t" / "tasks.md")])
    assert Path(args.ledger) == tmp_path / "t" / "tasks_minutes.json"


def test_the_table_grows_task_by_task(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    bench_tasks.merge_results(path, [_result("trec", 0.9)])
    table = bench_tasks.merge_results(path, [_result("sst2", 0.8)])
    assert [r.task for r in table] == ["sst2", "trec"]  # every task kept, in the table's order
    table = bench_tasks.merge_results(path, [_result("trec", 0.95)])  # a rerun replaces its own task only
    assert [(r.task, r.rows[0].score.mean) for r in table] == [("sst2", 0.8), ("trec", 0.95)]
    text = bench_tasks.render(table)
    assert "Made by `python -m benchmarks.bench_tasks --tasks sst2`" in text and "--tasks trec`" in text


def test_the_chain_counts_as_the_bilstm_it_deploys_and_bert_as_a_transformer() -> None:
    def row(model: str, pct: float) -> bench_tasks.Row:
        stat = Stat(0.9, 0.01, 3)
        share = Stat(pct, 0.5, 3)
        return bench_tasks.Row("trec", model, "test_accuracy", stat, share, stat, 1e6, 1e5, 10.0, 1.0, share)

    result = _result("trec", 0.9)
    result.rows = [row("teacher", 100.0), row("bilstm", 92.0), row("bert", 99.5), row("chain", 97.5)]
    (line,) = bench_tasks.targets([result])
    assert line == "- TREC best non-transformer student ≥ 97 %: chain 97.5 % (best on dev: 97.5 %) → **met**"


def test_sigterm_stops_a_run_like_ctrl_c_and_its_time_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Background jobs ignore SIGINT and get SIGTERM: the lap in ``run_task``'s finally must still run."""
    import os
    import signal

    ledger = tmp_path / "ledger.json"

    def stopped_mid_task(argv: list[str]) -> None:
        clock = bench_tasks.Stopwatch(ledger, "trec")
        clock.book(["task=trec"])
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before this ends
        finally:
            clock.lap()

    monkeypatch.setattr(bench_tasks, "main", stopped_mid_task)
    with pytest.raises(SystemExit, match="the same command resumes"):
        bench_tasks.cli([])
    assert json.loads(ledger.read_text())  # the interrupted sitting's minutes are in the ledger
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the command


def test_a_verdict_figure_never_rounds_across_its_bound() -> None:
    assert bench_tasks.beside(96.954, 97) == "96.95" and bench_tasks.beside(9.96, 10) == "9.96"
    assert bench_tasks.beside(96.7, 97) == "96.7" and bench_tasks.beside(97.04, 97) == "97.0"


def test_each_row_says_which_trial_it_came_from_and_when_an_earlier_study_supplied_it(tmp_path: Path) -> None:
    first = _run(["bilstm", "cnn"], 0.93, "first")
    first.picked = {
        "bilstm": {"study": "sst2-a", "trial": 3, "dev": 0.81, "this_run": True},
        "cnn": {"study": "sst2-b", "trial": 7, "dev": 0.84, "this_run": False},
    }
    path = tmp_path / "tasks.json"
    bench_tasks.merge_results(path, [first])
    second = _run(["bert"], 0.93, "second")
    second.picked = {"bert": {"study": "sst2-c", "trial": 0, "dev": 0.86, "this_run": True}}
    (table,) = bench_tasks.merge_results(path, [second])
    assert set(table.picked) == {"bilstm", "cnn", "bert"}  # the kept rows keep their provenance
    text = bench_tasks.render([table])
    assert "- SST-2 bilstm: trial 3 of `sst2-a` (dev 0.8100)\n" in text
    assert "- SST-2 cnn: trial 7 of `sst2-b` (dev 0.8400; an earlier study's, whose best dev score beat" in text


def test_a_best_student_target_is_chosen_on_dev_and_says_so_when_rows_cannot_be() -> None:
    """TREC's and Sara's target reads "the best student": the one dev ranks first, its test share reported."""
    result = _run(["cnn", "bilstm"], 0.93, "dev")
    cnn, bilstm = (find_row(result, m) for m in ("cnn", "bilstm"))
    assert cnn and bilstm
    result.task = "trec"
    cnn.pct, bilstm.pct = Stat(97.5, 0.2, 3), Stat(96.0, 0.2, 3)
    cnn.dev_pct, bilstm.dev_pct = Stat(95.0, 0.3, 3), Stat(98.0, 0.3, 3)
    (line,) = bench_tasks.targets([result])
    assert line == "- TREC best non-transformer student ≥ 97 %: bilstm 96.0 % (best on dev: 98.0 %) → **missed**"
    bilstm.dev_pct = None  # an older row: no dev share stored, so the pick falls back to test and says so
    (line,) = bench_tasks.targets([result])
    assert line.startswith("- TREC best non-transformer student ≥ 97 %: cnn 97.5 % (best on test: these rows")
    result.rows = [r for r in result.rows if model_key(r.model) != "bilstm"]  # one candidate: nothing was chosen
    (line,) = bench_tasks.targets([result])
    assert line == "- TREC best non-transformer student ≥ 97 %: cnn 97.5 % → **met**"


def _with_dev(result: bench_tasks.TaskResult, **dev: float) -> bench_tasks.TaskResult:
    for model, share in dev.items():
        row = find_row(result, model)
        assert row is not None
        row.dev_pct = Stat(share, 0.2, 3)
    return result


def test_a_student_measured_on_two_transfer_sets_keeps_the_row_better_on_dev(tmp_path: Path) -> None:
    """The transfer set's size is a choice, made on dev: the other row is listed as measured and not kept."""
    path = tmp_path / "tasks.json"
    four, eight = ("transfer.augment.n=3",), ("transfer.augment.n=7",)
    at_four = _with_dev(_run(["bilstm", "cnn"], 0.93, "at 4x", four, 30.0), bilstm=98, cnn=96)
    at_four.picked = {"bilstm": {"study": "s4", "trial": 2, "dev": 0.91, "this_run": True}}
    bench_tasks.merge_results(path, [at_four])
    at_eight = _with_dev(_run(["bilstm", "cnn"], 0.93, "at 8x", eight, 20.0), bilstm=97, cnn=97.5)
    at_eight.picked = {"bilstm": {"study": "s8", "trial": 1, "dev": 0.9, "this_run": True}}
    (table,) = bench_tasks.merge_results(path, [at_eight])
    rows = {model_key(r.model): r for r in table.rows}
    assert rows["bilstm"].dev_pct == Stat(98, 0.2, 3) and rows["cnn"].dev_pct == Stat(97.5, 0.2, 3)
    assert [(e["models"], e["command"]) for e in table.earlier] == [(["bilstm"], "at 4x")]
    assert table.picked["bilstm"]["study"] == "s4"  # the pick goes with its row
    assert sorted((n["model"], n["command"]) for n in table.not_kept) == [("bilstm", "at 8x"), ("cnn", "at 4x")]
    assert table.minutes == 50.0  # both transfer sets were measured to make the choice: both cost counts
    text = bench_tasks.render([table])
    assert "- SST-2 bilstm (8× transfer set): dev 97.0 % of the teacher (test 95.0 %). Made by `at 8x`." in text
    assert "- SST-2 cnn (4× transfer set): dev 96.0 %" in text
    assert "- SST-2 (bilstm): budget of at 4x." in text and "- SST-2 (cnn): budget of at 8x." in text
    # a later 8x run whose bilstm now beats the 4x row on dev: it takes the row, and the 4x one is the try on record
    (table,) = bench_tasks.merge_results(path, [_with_dev(_run(["bilstm"], 0.93, "8x again", eight, 26.0), bilstm=99)])
    assert find_row(table, "bilstm").dev_pct == Stat(99, 0.2, 3)  # type: ignore[union-attr]
    assert sorted((n["model"], n["command"]) for n in table.not_kept) == [("bilstm", "at 4x"), ("cnn", "at 4x")]
    # a remeasurement on the 8x set replaces that set's row; dev then prefers the 4x row again, kept on record
    (table,) = bench_tasks.merge_results(path, [_with_dev(_run(["bilstm"], 0.93, "8x third", eight, 27.0), bilstm=90)])
    assert find_row(table, "bilstm").dev_pct == Stat(98, 0.2, 3)  # type: ignore[union-attr]
    assert sorted((n["model"], n["command"]) for n in table.not_kept) == [("bilstm", "8x third"), ("cnn", "at 4x")]
    assert table.picked["bilstm"]["study"] == "s4"
    assert "- SST-2 (bilstm): budget of at 4x." in bench_tasks.render([table])
    # a tie on dev goes to the latest run
    (table,) = bench_tasks.merge_results(path, [_with_dev(_run(["bilstm"], 0.93, "8x tie", eight, 28.0), bilstm=98)])
    assert [(e["models"], e["command"]) for e in table.earlier] == [(["cnn"], "at 8x")]
    # a rerun that could not compare bilstm (say, its study had no complete trial) leaves the stored row standing
    failed = _run([], 0.93, "8x failed", eight, 29.0)
    failed.students, failed.missing = ["bilstm"], {"bilstm": "study has no complete trial"}
    (table,) = bench_tasks.merge_results(path, [failed])
    assert find_row(table, "bilstm") is not None and "bilstm" not in table.missing


def test_a_speed_target_says_when_the_speed_up_was_timed_on_the_serving_form() -> None:
    result = _result("sst2", 0.87)
    teacher = _row("sst2", "teacher (minilm)", 0.9, 1.0)
    served = bench_tasks.Row(**{**vars(_row("sst2", "bilstm", 0.87, 12.5)), "speedup_form": "serving"})
    result.rows = [teacher, served]
    line = next(x for x in bench_tasks.targets([result]) if "SST-2 bilstm" in x)
    assert "at 12.5× † (≥ 10× needed)" in line
    table = bench_tasks.cost_table([result])
    assert "| 12.5× † |" in table and table.endswith(bench_tasks.SERVING_NOTE)
    result.rows = [teacher, _row("sst2", "bilstm", 0.87, 12.5)]  # an older row: timed on the module
    assert "†" not in bench_tasks.cost_table([result])
