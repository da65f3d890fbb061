"""The README's test-suite line comes from a pytest run's own report, failures included."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import bench_tests


def test_the_line_counts_what_pytest_ran(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_also_ok():\n    assert 1 + 1 == 2\n"
        "@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n"
        "def test_broken():\n    assert 1 == 2\n",
        encoding="utf-8",
    )
    out = tmp_path / "tests.md"
    status = bench_tests.main(["--out", str(out), "--", str(suite), "-p", "no:cacheprovider"])
    text = out.read_text(encoding="utf-8")
    assert status == 1  # a failing suite is not a pass, though its line is written
    assert "2 of 4 tests passed, 1 skipped (not here), 1 failed, in " in text
    assert "test_sample::test_broken" in text and "python -m benchmarks.bench_tests" in text


def test_a_file_that_is_not_a_junit_report_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    path.write_text("<html/>", encoding="utf-8")
    with pytest.raises(ValueError, match=r"r\.xml: no <testsuite>"):
        bench_tests.read_junit(path)
