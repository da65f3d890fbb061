"""Task loaders, dev-split carving, loader errors and metrics, on tiny files written per test."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from transfer.errors import KDError
from transfer.loaders import DEV_FRACTION, TREC_COARSE, carve_dev_split
from transfer.metrics import METRICS, score
from transfer.tasks import Split, Task, available_tasks, load_task

REPO_ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_sst2(root: Path, train: str | None = None, dev: str | None = None) -> Path:
    write(root / "sst2" / "train.tsv", train or "sentence\tlabel\nit 's great \t1\n\nawful film \t0\nfine \t1\n")
    write(root / "sst2" / "dev.tsv", dev or "sentence\tlabel\nloved it \t1\nhated it \t0\n")
    return root


def make_cola(root: Path, train: str | None = None) -> Path:
    write(root / "cola" / "in_domain_train.tsv", train or "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n")
    write(root / "cola" / "in_domain_dev.tsv", "ks08\t1\t\tIn one.\n")
    write(root / "cola" / "out_of_domain_dev.tsv", "clc95\t0\t*\tOut one.\nclc95\t1\t \tOut two.")
    return root


def trec_lines(n: int) -> str:
    return "".join(f"{TREC_COARSE[i % 6]}:fine{i} Question number {i} ?\n" for i in range(n))


def make_trec(root: Path, train: str | bytes | None = None, test: str | None = None) -> Path:
    write(root / "trec" / "train_5500.label", train if train is not None else trec_lines(30))
    write(root / "trec" / "TREC_10.label", test or "NUM:date When was it ?\nHUM:ind Who did it ?\n")
    return root


def make_sara(root: Path, dev: str | None = None) -> Path:
    # Ids deliberately out of order in the file: label names must come out in id order.
    write(root / "sara" / "int_to_intent.tsv", "2\tthank\n0\taffirm\n1\tgreet\n")
    write(root / "sara" / "train.tsv", "0\tyes \n1\thello\n2\tthanks\n0\tsure\n")
    write(root / "sara" / "dev.tsv", dev or "1\thi there\n2\tthank you\n")
    write(root / "sara" / "test.tsv", "0\tok\n")
    return root


def raises(match_all: list[str], fn: Callable[..., object], *args: object, **kwargs: object) -> str:
    """Call ``fn`` expecting a one-line KDError whose message contains every string in ``match_all``."""
    with pytest.raises(KDError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    for part in match_all:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# loaders parse each format
# ---------------------------------------------------------------------------------------------


def test_sst2_glue_dev_is_test_and_dev_is_carved_from_train(tmp_path: Path) -> None:
    task = load_task("sst2", str(make_sst2(tmp_path)))
    assert task.name == "sst2" and task.labels == ["negative", "positive"] and task.metric == "accuracy"
    # GLUE ships no labelled test set: its dev set is our test split, reported only
    assert task.test.texts == ["loved it", "hated it"] and task.test.labels.tolist() == [1, 0]
    # dev is carved from train (the teacher never trains on it); headers stripped, texts stripped
    assert sorted(task.train.texts + task.dev.texts) == sorted(["it 's great", "awful film", "fine"])
    assert len(task.dev) == 1 and not set(task.dev.texts) & set(task.train.texts)
    label_of = {"it 's great": 1, "awful film": 0, "fine": 1}
    for split in (task.train, task.dev):
        assert [label_of[t] for t in split.texts] == split.labels.tolist()


def test_cola_glue_dev_is_test_in_domain_then_out_of_domain(tmp_path: Path) -> None:
    task = load_task("cola", str(make_cola(tmp_path)))
    assert task.labels == ["unacceptable", "acceptable"]
    assert task.metric == "mcc" and task.extra_metrics == ("accuracy",)
    assert sorted(task.train.texts + task.dev.texts) == ["Cat the sat.", "The cat sat."]
    assert len(task.dev) == 1
    assert task.test.texts == ["In one.", "Out one.", "Out two."]
    assert task.test.labels.tolist() == [1, 0, 1]


def test_trec_coarse_labels_latin1_carved_dev_and_test(tmp_path: Path) -> None:
    train = trec_lines(29).encode() + b"LOC:city Which city is a sister\xf0city ?\n"
    task = load_task("trec", str(make_trec(tmp_path, train=train)))
    assert task.labels == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"] and task.metric == "accuracy"
    assert len(task.dev) == 3 and len(task.train) == 27
    all_texts = task.train.texts + task.dev.texts
    assert "Which city is a sister\xf0city ?" in all_texts
    expected = [f"Question number {i} ?" for i in range(29)] + ["Which city is a sister\xf0city ?"]
    assert sorted(all_texts) == sorted(expected)
    assert task.test is not None and task.test.texts == ["When was it ?", "Who did it ?"]
    assert task.test.labels.tolist() == [5, 3]
    # Labels follow the text: "Question number i" has coarse class i % 6.
    for text, label in zip(task.train.texts, task.train.labels.tolist(), strict=True):
        if text.startswith("Question"):
            assert label == int(text.split()[2]) % 6


def test_sara_label_first_and_names_in_id_order(tmp_path: Path) -> None:
    task = load_task("sara", str(make_sara(tmp_path)))
    assert task.labels == ["affirm", "greet", "thank"]
    assert task.metric == "f1_micro" and task.extra_metrics == ("f1_macro", "accuracy")
    assert task.train.texts == ["yes", "hello", "thanks", "sure"]
    assert task.train.labels.tolist() == [0, 1, 2, 0]
    assert task.dev.labels.tolist() == [1, 2]
    assert task.test is not None and task.test.texts == ["ok"]


def test_tsv_multiclass_with_header_and_dev(tmp_path: Path) -> None:
    train = write(
        tmp_path / "t.tsv",
        "text\tlabel\nsunny day \tweather\nbig win\tsport\nrain\tweather\nnews\tpolitics\n",
    )
    dev = write(tmp_path / "d.tsv", "goal\tsport\r\nvote\tpolitics\r\n")
    task = load_task("tsv", str(tmp_path), train=str(train), dev=str(dev))
    assert task.labels == ["politics", "sport", "weather"]
    assert task.metric == "f1_macro" and task.extra_metrics == ("f1_micro", "accuracy")
    assert task.dev.texts == ["goal", "vote"] and task.dev.labels.tolist() == [1, 0]
    assert len(task.test) == 1 and len(task.train) == 3  # no data.test: carved from train
    assert sorted(task.train.texts + task.test.texts) == sorted(["sunny day", "big win", "rain", "news"])


def test_tsv_binary_carves_dev_and_test_and_resolves_paths_in_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "data" / "train.tsv", "".join(f"text {i}\t{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    task = load_task("tsv", str(tmp_path / "data"), train="train.tsv")
    assert task.labels == ["no", "yes"] and task.metric == "accuracy" and task.extra_metrics == ()
    assert len(task.test) == 2 and len(task.dev) == 2 and len(task.train) == 16
    assert not set(task.dev.texts) & set(task.train.texts)
    assert not set(task.test.texts) & (set(task.train.texts) | set(task.dev.texts))
    # stratified: each carved split keeps both labels
    assert sorted(task.dev.labels.tolist()) == [0, 1] and sorted(task.test.labels.tolist()) == [0, 1]


def test_tsv_takes_a_test_file(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", "".join(f"text {i}\t{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    test = write(tmp_path / "x.tsv", "held out\tyes\n")
    task = load_task("tsv", str(tmp_path), train=str(train), test=str(test))
    assert task.test.texts == ["held out"] and len(task.train) + len(task.dev) == 20


# ---------------------------------------------------------------------------------------------
# dev carving
# ---------------------------------------------------------------------------------------------


def test_stratified_carve_keeps_label_shares(tmp_path: Path) -> None:
    labels = ["a"] * 900 + ["b"] * 100
    train, dev = carve_dev_split(len(labels), labels=labels)
    dev_labels = [labels[i] for i in dev]
    assert len(dev) == 100 and dev_labels.count("b") == 10 and dev_labels.count("a") == 90
    assert sorted(train.tolist() + dev.tolist()) == list(range(1000))
    # the same rows in another order of labels gives the same split sizes per label; reruns are identical
    again_train, again_dev = carve_dev_split(len(labels), labels=labels)
    assert np.array_equal(dev, again_dev) and np.array_equal(train, again_train)


@pytest.mark.parametrize("n", [2, 7, 10, 101, 5452])
def test_carve_is_deterministic_disjoint_and_complete(n: int) -> None:
    train, dev = carve_dev_split(n)
    train2, dev2 = carve_dev_split(n)
    assert np.array_equal(train, train2) and np.array_equal(dev, dev2)
    assert not set(train.tolist()) & set(dev.tolist())
    assert sorted(train.tolist() + dev.tolist()) == list(range(n))
    assert len(dev) == max(1, round(DEV_FRACTION * n)) and len(train) >= 1
    assert list(dev) == sorted(dev) and list(train) == sorted(train)


def test_carved_loaders_are_deterministic(tmp_path: Path) -> None:
    a = load_task("trec", str(make_trec(tmp_path)))
    b = load_task("trec", str(tmp_path))
    assert a.dev.texts == b.dev.texts and a.fingerprint() == b.fingerprint()
    assert not set(a.dev.texts) & set(a.train.texts)


def test_carving_needs_two_rows(tmp_path: Path) -> None:
    make_trec(tmp_path, train=trec_lines(1), test="ABBR:exp What is it ?\n")
    raises(["train_5500.label", "carve"], load_task, "trec", str(tmp_path))


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_missing_data_dir_names_folder_and_settings(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    raises([str(missing), "data.dir", "KD_DATA_DIR"], load_task, "sst2", str(missing))
    raises([str(tmp_path / "cola"), "data.dir", "KD_DATA_DIR"], load_task, "cola", str(tmp_path))


@pytest.mark.parametrize(
    ("task", "make", "remove"),
    [
        ("sst2", make_sst2, "sst2/dev.tsv"),
        ("cola", make_cola, "cola/out_of_domain_dev.tsv"),
        ("trec", make_trec, "trec/TREC_10.label"),
        ("sara", make_sara, "sara/int_to_intent.tsv"),
    ],
)
def test_missing_file_names_file_and_setting(
    tmp_path: Path, task: str, make: Callable[[Path], Path], remove: str
) -> None:
    make(tmp_path)
    (tmp_path / remove).unlink()
    raises([remove.split("/")[1], "data.dir"], load_task, task, str(tmp_path))


def test_tsv_missing_train_option_and_files(tmp_path: Path) -> None:
    raises(["data.train=<file>"], load_task, "tsv", str(tmp_path))
    raises(["nope.tsv", "data.train"], load_task, "tsv", str(tmp_path), train="nope.tsv")
    train = write(tmp_path / "t.tsv", "a\tx\nb\ty\n")
    raises(
        ["dev_missing.tsv", "data.dev"],
        load_task,
        "tsv",
        str(tmp_path),
        train=str(train),
        dev="dev_missing.tsv",
    )


def test_malformed_rows_name_file_and_line(tmp_path: Path) -> None:
    # Wrong column count (line 3: a missing tab).
    make_sst2(tmp_path, train="sentence\tlabel\ngood \t1\nno tab here 0\n")
    msg = raises(
        ["train.tsv:3:", "expected 2 tab-separated columns", "'no tab here 0'"],
        load_task,
        "sst2",
        str(tmp_path),
    )
    assert str(tmp_path / "sst2" / "train.tsv") in msg
    # Label not in {0, 1}.
    make_sst2(tmp_path, train="sentence\tlabel\ngood \tpositive\n")
    raises(["train.tsv:2:", "label to be one of 0, 1"], load_task, "sst2", str(tmp_path))
    # CoLA row with three columns.
    make_cola(tmp_path, train="gj04\t1\tThe cat sat.\n")
    raises(["in_domain_train.tsv:1:", "4 tab-separated columns"], load_task, "cola", str(tmp_path))
    # TREC line without "COARSE:fine ".
    make_trec(tmp_path, train=trec_lines(3) + "\nWhat is this ?\n")
    raises(["train_5500.label:5:", "COARSE:fine question", "'What is this ?'"], load_task, "trec", str(tmp_path))


def test_malformed_long_line_is_truncated(tmp_path: Path) -> None:
    make_trec(tmp_path, train="x" * 500 + "\n")
    msg = raises(["train_5500.label:1:"], load_task, "trec", str(tmp_path))
    assert len(msg) < 400 and "..." in msg


def test_sara_label_not_an_int(tmp_path: Path) -> None:
    make_sara(tmp_path)
    write(tmp_path / "sara" / "train.tsv", "0\tyes\ngreet\thello\n")
    raises(["train.tsv:2:", "intent id", "'greet\\thello'"], load_task, "sara", str(tmp_path))


def test_unseen_dev_label_names_file_label_and_line(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", "a\tx\nb\ty\n")
    dev = write(tmp_path / "d.tsv", "c\tx\nd\tz\n")
    raises(
        ["d.tsv:2:", "'z'", "never seen in train"],
        load_task,
        "tsv",
        str(tmp_path),
        train=str(train),
        dev=str(dev),
    )
    # Sara: intent 2 exists in int_to_intent.tsv but never occurs in train.
    make_sara(tmp_path)
    write(tmp_path / "sara" / "train.tsv", "0\tyes\n1\thello\n")
    raises(["dev.tsv:2:", "'thank'", "never seen"], load_task, "sara", str(tmp_path))


def test_empty_files_are_named(tmp_path: Path) -> None:
    make_sst2(tmp_path, dev="sentence\tlabel\n\n")
    raises(["dev.tsv", "empty"], load_task, "sst2", str(tmp_path))
    make_sara(tmp_path)
    write(tmp_path / "sara" / "test.tsv", "")
    raises(["test.tsv", "empty"], load_task, "sara", str(tmp_path))
    train = write(tmp_path / "empty.tsv", "\n \n")
    raises(["empty.tsv", "empty"], load_task, "tsv", str(tmp_path), train=str(train))


def test_tsv_single_label_and_unknown_options(tmp_path: Path) -> None:
    train = write(tmp_path / "t.tsv", "a\tx\nb\tx\n")
    raises(["t.tsv", "2 distinct labels"], load_task, "tsv", str(tmp_path), train=str(train))
    raises(["sst2", "train"], load_task, "sst2", str(make_sst2(tmp_path)), train="x.tsv")
    task = load_task("sst2", str(tmp_path), train=None)  # None options are ignored
    assert len(task.train) + len(task.dev) == 3


def test_unknown_task_lists_known_tasks(tmp_path: Path) -> None:
    msg = raises(["'nope'"], load_task, "nope", str(tmp_path))
    for name in ("cola", "sara", "sst2", "trec", "tsv"):
        assert name in msg
    assert {"cola", "sara", "sst2", "trec", "tsv"} <= set(available_tasks())


def test_limit_caps_every_split(tmp_path: Path) -> None:
    task = load_task("sara", str(make_sara(tmp_path)), limit=1)
    assert len(task.train) == 1 and len(task.dev) == 1 and task.test is not None and len(task.test) == 1
    assert task.train.texts == ["yes"] and task.train.labels.tolist() == [0]
    assert len(load_task("sara", str(tmp_path), limit=100).train) == 4


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_known_values() -> None:
    assert METRICS == ("accuracy", "mcc", "f1_micro", "f1_macro")
    assert score("accuracy", [0, 1, 1, 0], [0, 1, 0, 0]) == pytest.approx(0.75)
    assert score("mcc", [0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(1.0)
    assert score("mcc", [0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(-1.0)
    assert score("mcc", [0, 1, 1, 0], [1, 1, 1, 1]) == pytest.approx(0.0)
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
    # Per-class F1: class 0 P=1/2 R=1/2 -> 1/2; class 1 P=2/3 R=1 -> 4/5; class 2 P=1 R=1/2 -> 2/3.
    assert score("f1_macro", y_true, y_pred) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert score("f1_micro", y_true, y_pred) == pytest.approx(4 / 6)
    assert isinstance(score("accuracy", np.array([1]), np.array([1])), float)


def test_metric_errors() -> None:
    msg = raises(["'auc'"], score, "auc", [0], [0])
    for name in METRICS:
        assert name in msg
    raises(["shape"], score, "accuracy", [0, 1], [0])
    raises(["no examples"], score, "accuracy", [], [])
    raises(["unlabelled"], score, "accuracy", [-1, 0], [0, 0])


def test_task_score_reports_main_metric_first() -> None:
    split = Split(["a", "b"], np.array([0, 1]))
    task = Task("t", ["n", "p"], "mcc", split, split, split, extra_metrics=("accuracy", "mcc"))
    result = task.score([0, 1, 1, 0], [0, 1, 0, 0])
    assert list(result) == ["mcc", "accuracy"]
    assert result["accuracy"] == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# the real data sets (skipped where they are not present)
# ---------------------------------------------------------------------------------------------

REAL_DATA = Path(os.environ.get("KD_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real data folder {REAL_DATA} is absent")
def test_real_tasks_have_known_row_counts() -> None:
    data = str(REAL_DATA)
    sst2 = load_task("sst2", data)
    # GLUE dev becomes test; dev is 10 % of train's 6,880 whole sentences, stratified, and train
    # loses the 6,368 phrases found only inside them: dev is as long as test, as test-like
    assert (len(sst2.train), len(sst2.dev), len(sst2.test)) == (60981, 688, 872)
    mean_tokens = [sum(len(t.split()) for t in s.texts) / len(s) for s in (sst2.dev, sst2.test)]
    assert abs(mean_tokens[0] - mean_tokens[1]) < 1.0
    cola = load_task("cola", data)
    assert (len(cola.train), len(cola.dev), len(cola.test)) == (7696, 855, 1043)
    trec = load_task("trec", data)
    assert len(trec.train) + len(trec.dev) == 5452 and trec.test is not None and len(trec.test) == 500
    assert trec.num_labels == 6
    sara = load_task("sara", data)
    assert sara.test is not None and (len(sara.train), len(sara.dev), len(sara.test)) == (2853, 970, 987)
    assert sara.num_labels == 57
