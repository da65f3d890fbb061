"""The README's test-suite figure (how many tests, how long), measured by running the suite.

    python -m benchmarks.bench_tests              # runs `pytest -q`, writes benchmarks/results/tests.md
    python -m benchmarks.bench_tests -- -k cache  # extra pytest arguments after "--" (the file says so)

The count and the time come from pytest's own JUnit report, so the README (which includes the
file with ``python -m benchmarks.readme``) never states a number a run did not produce. A run with
failures still writes its line, failures named, and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import REPO, split_overrides

OUT = REPO / "benchmarks" / "results" / "tests.md"


@dataclass
class SuiteRun:
    """What one pytest run reported: counts per outcome and the suite's wall time."""

    tests: int
    failures: int
    errors: int
    skipped: int
    seconds: float
    failed: list[str]
    skip_reasons: list[str]

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


def read_junit(path: Path) -> SuiteRun:
    """Counts from a JUnit XML report (pytest writes one ``testsuite`` under ``testsuites``)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    if not suites:
        raise ValueError(f"{path}: no <testsuite> element, so not a pytest JUnit report")
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for suite in suites
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return SuiteRun(
        tests=sum(int(s.get("tests", 0)) for s in suites),
        failures=sum(int(s.get("failures", 0)) for s in suites),
        errors=sum(int(s.get("errors", 0)) for s in suites),
        skipped=sum(int(s.get("skipped", 0)) for s in suites),
        seconds=sum(float(s.get("time", 0.0)) for s in suites),
        failed=failed,
        skip_reasons=[
            str(skip.get("message", "")).removeprefix("Skipped: ") for suite in suites for skip in suite.iter("skipped")
        ],
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def describe(run: SuiteRun, pytest_args: list[str], when: str, cores: int, note: str = "") -> str:
    """The line the README shows: counts, time, where and when; what failed, if anything did."""
    command = " ".join(["pytest", "-q", *pytest_args])
    line = (
        f"`{command}`: {run.passed} of {run.tests} tests passed"
        + (f", {run.skipped} skipped ({'; '.join(sorted(set(run.skip_reasons)))})" if run.skipped else "")
        + (f", {run.failures + run.errors} failed" if run.failures or run.errors else "")
        + f", in {_duration(run.seconds)} on {cores} CPU cores"
        + (f", {note}" if note else "")
        + f" ({when}; `python -m benchmarks.bench_tests`)."
    )
    if run.failed:
        line += "\n\nFailed: " + ", ".join(f"`{name}`" for name in run.failed) + "."
    return line + "\n"


def main(argv: list[str]) -> int:
    own, pytest_args = split_overrides(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(OUT), help="the Markdown file the README includes")
    parser.add_argument("--note", default="", help="what else the machine was doing, said after the time")
    args = parser.parse_args(own)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        status = subprocess.call([sys.executable, "-m", "pytest", "-q", f"--junitxml={report}", *pytest_args], cwd=REPO)
        if not report.is_file():
            sys.exit(f"pytest exited {status} without writing {report}: nothing to report")
        run = read_junit(report)
    text = describe(run, pytest_args, time.strftime("%Y-%m-%d"), os.cpu_count() or 1, args.note)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text, end="")
    print(f"written to {out}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
