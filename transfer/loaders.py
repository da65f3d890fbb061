"""Built-in task loaders: SST-2, CoLA, TREC, Sara and a generic ``text<TAB>label`` format.

Each loader turns one on-disk format into the same ``Task``. All of them share one line reader,
one row parser and one dev-split carver, so they fail the same way: every problem a user can fix
is a ``KDError`` of one line that names the file (and the line, for a bad row) and the setting
that points at it (``data.dir`` / ``KD_DATA_DIR``, ``data.train``, ``data.dev``).
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from transfer.errors import KDError
from transfer.phrases import sentence_dev_split
from transfer.tasks import Split, Task, register_task

DEV_FRACTION = 0.1  # share of train carved off as dev when a task ships without one
CARVE_SEED = 0  # fixed: the carved dev split must be identical on every run and machine
TREC_COARSE: tuple[str, ...] = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")

_HEADERS = {("text", "label"), ("sentence", "label")}
_DIR_SETTING = "the data.dir setting or the KD_DATA_DIR env var"
_TREC_LINE = re.compile(r"([A-Z]+):(\S+) (.*)")
_SHOW_CHARS = 80


class Row(NamedTuple):
    """One parsed example, remembering where it came from for error messages."""

    text: str
    label: str  # label *name*, e.g. "positive"
    path: Path
    line: int


class _BadRow(ValueError):
    """Raised by a line parser; its message says what the line should have looked like."""


LineParser = Callable[[str], tuple[str, str]]  # line -> (text, label name)


# ---------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------


def carve_dev_split(
    n: int, fraction: float = DEV_FRACTION, seed: int = CARVE_SEED, labels: Sequence[object] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices ``0..n-1`` into ``(train, dev)`` index arrays, each in ascending order.

    With ``labels``, the split is stratified: each label keeps its share in both parts (a
    largest-remainder allocation of ``round(fraction * n)`` dev rows over the labels, then a
    seeded shuffle within each label). The split is disjoint, covers every row, and depends
    only on ``n``, the labels and the fixed seed, so it is the same on every run and machine.
    """
    if n < 2:
        raise ValueError(f"need at least 2 rows to carve a dev split, got {n}")
    n_dev = min(n - 1, max(1, round(fraction * n)))
    rng = np.random.default_rng(seed)
    if labels is None:
        order = rng.permutation(n)
        return np.sort(order[n_dev:]), np.sort(order[:n_dev])
    keys = np.asarray([str(label) for label in labels])
    if len(keys) != n:
        raise ValueError(f"{len(keys)} labels for {n} rows")
    names, counts = np.unique(keys, return_counts=True)  # sorted: independent of row order
    exact = counts * n_dev / n
    take = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - take), kind="stable")[: n_dev - int(take.sum())]:
        take[i] += 1
    dev: list[np.ndarray] = []
    for name, k in zip(names, take, strict=True):
        rows = np.flatnonzero(keys == name)
        dev.append(rng.permutation(rows)[:k])
    dev_idx = np.sort(np.concatenate(dev)) if dev else np.array([], dtype=np.int64)
    return np.setdiff1d(np.arange(n), dev_idx), dev_idx


def _carve(rows: list[Row], path: Path, what: str = "a dev split") -> tuple[list[Row], list[Row]]:
    """Rows of ``path`` split into (kept, carved) by a stratified ``carve_dev_split``."""
    if len(rows) < 2:
        raise KDError(f"{path}: only {len(rows)} row(s); need at least 2 to carve {what} from it")
    kept_idx, carved_idx = carve_dev_split(len(rows), labels=[r.label for r in rows])
    return [rows[i] for i in kept_idx], [rows[i] for i in carved_idx]


def _carve_sentences(rows: list[Row], path: Path) -> tuple[list[Row], list[Row]]:
    """Rows of a treebank-style ``path`` split into (train, dev): dev whole sentences, train without their phrases."""

    def carve(n: int, labels: Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
        if n < 2:
            raise KDError(f"{path}: only {n} whole sentence(s) among its rows; need at least 2 to carve a dev split")
        return carve_dev_split(n, labels=labels)

    train_idx, dev_idx = sentence_dev_split([r.text for r in rows], carve, [r.label for r in rows])
    return [rows[i] for i in train_idx], [rows[i] for i in dev_idx]


def _show(line: str | bytes) -> str:
    """``repr`` of a line, truncated so an error message stays on one readable line."""
    if len(line) > _SHOW_CHARS:
        return repr(line[:_SHOW_CHARS]) + "..."
    return repr(line)


def _read_lines(path: Path, encoding: str = "utf-8", skip_header: bool = False) -> list[tuple[int, str]]:
    """Non-blank lines of ``path`` as ``(line number, text)``, without line endings (LF or CRLF).

    Decodes line by line so an encoding problem is reported with its line number. With
    ``skip_header``, a first line ``text<TAB>label`` or ``sentence<TAB>label`` is dropped.
    """
    raw = path.read_bytes()
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    lines: list[tuple[int, str]] = []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            line = chunk.decode(encoding).rstrip("\r")
        except UnicodeDecodeError as e:
            raise KDError(f"{path}:{number}: expected {encoding} text, got {_show(chunk)} ({e.reason})") from None
        if line.strip():
            lines.append((number, line))
    if lines and skip_header:
        first = tuple(field.strip().lower() for field in lines[0][1].split("\t"))
        if first in _HEADERS:
            lines = lines[1:]
    if not lines:
        raise KDError(f"{path}: the file is empty (no data rows)")
    return lines


def _parse_file(path: Path, parse: LineParser, encoding: str = "utf-8", skip_header: bool = False) -> list[Row]:
    """Every data line of ``path`` turned into a ``Row`` by ``parse``; a bad line is a ``KDError``."""
    rows = []
    for number, line in _read_lines(path, encoding, skip_header):
        try:
            text, label = parse(line)
        except _BadRow as e:
            raise KDError(f"{path}:{number}: expected {e}, got {_show(line)}") from None
        rows.append(Row(text, label, path, number))
    return rows


def _tsv_parser(
    columns: tuple[str, ...],
    text_col: str,
    label_col: str,
    label_names: Mapping[str, str] | None = None,
    label_what: str | None = None,
) -> LineParser:
    """Parser for a tab-separated line with exactly ``columns``.

    ``label_names`` maps the raw label field to a label name (anything else is a bad row);
    without it the stripped field is the label name itself. ``label_what`` describes a valid
    label field in error messages (default: the list of valid values).
    """
    layout = f"{len(columns)} tab-separated columns ({', '.join(columns)})"
    text_i, label_i = columns.index(text_col), columns.index(label_col)

    def parse(line: str) -> tuple[str, str]:
        fields = line.split("\t")
        if len(fields) != len(columns):
            raise _BadRow(layout)
        text, label = fields[text_i].strip(), fields[label_i].strip()
        if not text:
            raise _BadRow(f"a non-empty {text_col} in {layout}")
        if label_names is not None:
            if label not in label_names:
                raise _BadRow(label_what or f"{label_col} to be one of {', '.join(label_names)}")
            label = label_names[label]
        elif not label:
            raise _BadRow(f"a non-empty {label_col} in {layout}")
        return text, label

    return parse


def _parse_trec(line: str) -> tuple[str, str]:
    """``COARSE:fine question`` -> (question, COARSE); the fine label is dropped."""
    match = _TREC_LINE.fullmatch(line)
    if match is None or match.group(1) not in TREC_COARSE or not match.group(3).strip():
        raise _BadRow(f"'COARSE:fine question' with COARSE one of {', '.join(TREC_COARSE)}")
    return match.group(3).strip(), match.group(1)


def _task_dir(data_dir: str, name: str) -> Path:
    """``<data_dir>/<name>``, which must exist."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise KDError(f"data folder not found: {root} (it comes from {_DIR_SETTING})")
    folder = root / name
    if not folder.is_dir():
        raise KDError(f"data folder not found: {folder} (set {_DIR_SETTING} to the folder that holds {name}/)")
    return folder


def _data_file(folder: Path, filename: str) -> Path:
    """A required file of a built-in task's folder."""
    path = folder / filename
    if not path.is_file():
        raise KDError(f"missing file {path} (check {_DIR_SETTING}: it must hold {folder.name}/{filename})")
    return path


def _option_file(value: object, data_dir: str, setting: str) -> Path:
    """A file named by an option: absolute, or relative to the current folder, else to ``data_dir``."""
    path = Path(str(value)).expanduser()
    candidates = [path] if path.is_absolute() else [path, Path(data_dir).expanduser() / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = "" if path.is_absolute() else f" (looked in the current folder and in data.dir={data_dir})"
    raise KDError(f"file not found: {value} (from the {setting} setting){where}")


def _no_options(task: str, options: Mapping[str, object]) -> None:
    """Reject options a loader does not understand (``None`` values are ignored)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise KDError(f"task {task!r} takes no options, got: {', '.join(given)}")


def _check_seen(rows: list[Row], train: list[Row]) -> None:
    """Every label of a dev/test split must occur in train: the model could never learn it."""
    seen = {r.label for r in train}
    for r in rows:
        if r.label not in seen:
            raise KDError(
                f"{r.path}:{r.line}: label {r.label!r} never seen in train ({train[0].path.name}); "
                f"train labels: {', '.join(sorted(seen))}"
            )


def _split(rows: list[Row], labels: list[str]) -> Split:
    index = {name: i for i, name in enumerate(labels)}
    return Split([r.text for r in rows], np.array([index[r.label] for r in rows], dtype=np.int64))


def _task(
    name: str,
    labels: list[str],
    metric: str,
    train: list[Row],
    dev: list[Row],
    test: list[Row],
    extra_metrics: tuple[str, ...] = (),
) -> Task:
    return Task(
        name=name,
        labels=labels,
        metric=metric,
        train=_split(train, labels),
        dev=_split(dev, labels),
        test=_split(test, labels),
        extra_metrics=extra_metrics,
    )


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------


@register_task("sst2")
def load_sst2(data_dir: str, **options: object) -> Task:
    """GLUE SST-2: ``sst2/train.tsv`` and ``dev.tsv`` (header ``sentence<TAB>label``).

    GLUE ships no labelled test set, so its official dev set is our ``test`` (reported, never
    used for a choice) and ``dev`` is carved from train like it: whole training sentences
    (stratified, fixed seed), with every phrase found only inside them dropped from train
    (``transfer.phrases``). A dev of random train rows would be mostly phrases of sentences the
    model trained on, scoring above test without tracking it.
    """
    _no_options("sst2", options)
    folder = _task_dir(data_dir, "sst2")
    labels = ["negative", "positive"]
    parse = _tsv_parser(("sentence", "label"), "sentence", "label", {"0": labels[0], "1": labels[1]})
    path = _data_file(folder, "train.tsv")
    full_train = _parse_file(path, parse, skip_header=True)
    test = _parse_file(_data_file(folder, "dev.tsv"), parse, skip_header=True)
    _check_seen(test, full_train)
    train, dev = _carve_sentences(full_train, path)
    return _task("sst2", labels, "accuracy", train, dev, test)


@register_task("cola")
def load_cola(data_dir: str, **options: object) -> Task:
    """Raw CoLA release: test = GLUE's dev (in-domain then out-of-domain dev); dev carved from train."""
    _no_options("cola", options)
    folder = _task_dir(data_dir, "cola")
    labels = ["unacceptable", "acceptable"]
    parse = _tsv_parser(("source", "label", "mark", "sentence"), "sentence", "label", {"0": labels[0], "1": labels[1]})
    path = _data_file(folder, "in_domain_train.tsv")
    full_train = _parse_file(path, parse)
    test = [
        row
        for filename in ("in_domain_dev.tsv", "out_of_domain_dev.tsv")
        for row in _parse_file(_data_file(folder, filename), parse)
    ]
    _check_seen(test, full_train)
    train, dev = _carve(full_train, path)
    return _task("cola", labels, "mcc", train, dev, test, extra_metrics=("accuracy",))


@register_task("trec")
def load_trec(data_dir: str, **options: object) -> Task:
    """TREC (Li & Roth) with its 6 coarse classes; dev is carved from train, TREC_10 is test."""
    _no_options("trec", options)
    folder = _task_dir(data_dir, "trec")
    # latin-1: train_5500.label has one stray non-UTF-8 byte (see the data's PROVENANCE.md).
    full_train = _parse_file(_data_file(folder, "train_5500.label"), _parse_trec, encoding="latin-1")
    test = _parse_file(_data_file(folder, "TREC_10.label"), _parse_trec, encoding="latin-1")
    _check_seen(test, full_train)
    train, dev = _carve(full_train, full_train[0].path)
    return _task("trec", list(TREC_COARSE), "accuracy", train, dev, test)


def _read_intents(path: Path) -> dict[str, str]:
    """``int_to_intent.tsv`` (``id<TAB>name``) as {id: name}, in ascending id order."""
    intents: dict[int, str] = {}
    for number, line in _read_lines(path):
        fields = [f.strip() for f in line.split("\t")]
        bad = len(fields) != 2 or not fields[0].lstrip("-").isdigit() or not fields[1]
        if bad or int(fields[0]) in intents or fields[1] in intents.values():
            raise KDError(
                f"{path}:{number}: expected a unique integer id and a unique intent name "
                f"(id<TAB>name), got {_show(line)}"
            )
        intents[int(fields[0])] = fields[1]
    return {str(i): intents[i] for i in sorted(intents)}


@register_task("sara")
def load_sara(data_dir: str, **options: object) -> Task:
    """Rasa's Sara intents: ``<intent id><TAB><utterance>`` (label first), names from int_to_intent.tsv."""
    _no_options("sara", options)
    folder = _task_dir(data_dir, "sara")
    intents = _read_intents(_data_file(folder, "int_to_intent.tsv"))
    parse = _tsv_parser(
        ("intent id", "utterance"),
        "utterance",
        "intent id",
        intents,
        "an intent id listed in int_to_intent.tsv",
    )
    train, dev, test = (_parse_file(_data_file(folder, f), parse) for f in ("train.tsv", "dev.tsv", "test.tsv"))
    _check_seen(dev, train)
    _check_seen(test, train)
    return _task("sara", list(intents.values()), "f1_micro", train, dev, test, ("f1_macro", "accuracy"))


@register_task("tsv")
def load_tsv(data_dir: str, **options: object) -> Task:
    """Any ``text<TAB>label`` files: ``train`` (required), ``dev`` and ``test`` (each else carved from train).

    Paths are absolute or relative to the current folder or to ``data_dir``. The label set is the
    sorted unique labels of the train file; an optional ``text<TAB>label`` header is skipped.
    A missing test split is carved first, then a missing dev split from what remains, so the
    three splits are always disjoint.
    """
    options = dict(options)
    train_opt, dev_opt, test_opt = options.pop("train", None), options.pop("dev", None), options.pop("test", None)
    _no_options("tsv", options)
    if not train_opt:
        raise KDError("task 'tsv' needs a training file: set data.train=<file> (lines of text<TAB>label)")
    parse = _tsv_parser(("text", "label"), "text", "label")
    train_path = _option_file(train_opt, data_dir, "data.train")
    train = _parse_file(train_path, parse, skip_header=True)
    labels = sorted({r.label for r in train})
    if len(labels) < 2:
        raise KDError(f"{train_path}: needs at least 2 distinct labels, found only {labels[0]!r}")
    split_rows: dict[str, list[Row]] = {}
    for name, option, setting in (("test", test_opt, "data.test"), ("dev", dev_opt, "data.dev")):
        if option:
            split_rows[name] = _parse_file(_option_file(option, data_dir, setting), parse, skip_header=True)
            _check_seen(split_rows[name], train)
    for name in ("test", "dev"):
        if name not in split_rows:
            train, split_rows[name] = _carve(train, train_path, f"a {name} split")
    dev, test = split_rows["dev"], split_rows["test"]
    if len(labels) == 2:
        return _task("tsv", labels, "accuracy", train, dev, test)
    return _task("tsv", labels, "f1_macro", train, dev, test, extra_metrics=("f1_micro", "accuracy"))
