"""Side-by-side latency spends its sample budget on texts, not calls: batch timing stays cheap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from studies.measure import LATENCY_ROUNDS, latency_beside_teacher


def _student(predict, serving=None, form: str = "module") -> SimpleNamespace:
    """A stand-in student: its logits, and a serving form (by default itself)."""
    return SimpleNamespace(name="fake", predict_logits=predict, serving_predictor=lambda: (form, serving or predict))


def _counting() -> tuple[list[int], object]:
    calls: list[int] = []

    def predict(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.zeros((len(texts), 2), dtype=np.float32)

    return calls, predict


def test_batch_latency_uses_fewer_calls_of_the_same_texts() -> None:
    teacher_calls, teacher = _counting()
    student_calls, student = _counting()
    prep = SimpleNamespace(
        cfg=SimpleNamespace(tracking=SimpleNamespace(latency_samples=64)),
        teacher=SimpleNamespace(predict_logits=teacher),
        task=SimpleNamespace(dev=SimpleNamespace(texts=[f"text {i}" for i in range(100)])),
    )
    out = latency_beside_teacher(_student(student), prep, batch_size=1)
    assert out["latency_ms_b1"] > 0 and len(student_calls) == LATENCY_ROUNDS * (2 + 64 // LATENCY_ROUNDS)
    teacher_calls.clear(), student_calls.clear()
    latency_beside_teacher(_student(student), prep, batch_size=64)
    assert student_calls == teacher_calls == [64] * (LATENCY_ROUNDS * 2)  # one warm-up and one timed call a round


def test_speedup_is_the_median_of_per_round_ratios_with_its_quartiles(monkeypatch) -> None:
    """A round disturbed by another job (here: the student's block 5x slower in two rounds) is outvoted."""
    import studies.evaluate as evaluate

    clock = [0.0]
    monkeypatch.setattr(evaluate.time, "perf_counter", lambda: clock[0])
    calls = {"student": 0}
    per_round = 2 + 200 // LATENCY_ROUNDS  # warm-up and timed calls of one block

    def teacher(texts: list[str]) -> np.ndarray:
        clock[0] += 0.010
        return np.zeros((len(texts), 2), dtype=np.float32)

    def student(texts: list[str]) -> np.ndarray:
        disturbed = calls["student"] // per_round in (2, 7)
        calls["student"] += 1
        clock[0] += 0.001 * (5 if disturbed else 1)
        return np.zeros((len(texts), 2), dtype=np.float32)

    prep = SimpleNamespace(
        cfg=SimpleNamespace(tracking=SimpleNamespace(latency_samples=200)),
        teacher=SimpleNamespace(predict_logits=teacher),
        task=SimpleNamespace(dev=SimpleNamespace(texts=["a text"])),
    )
    out = latency_beside_teacher(_student(student), prep)
    assert out["latency_ratio_teacher"] == pytest.approx(10.0)
    assert out["latency_ratio_teacher_q25"] == pytest.approx(10.0)  # 8 of 10 rounds are undisturbed
    assert out["latency_ratio_teacher_q75"] == pytest.approx(10.0)
    assert out["teacher_latency_ms_b1"] == pytest.approx(10.0) and out["latency_ms_b1"] == pytest.approx(1.0)


def _prep(texts: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        cfg=SimpleNamespace(tracking=SimpleNamespace(latency_samples=20)),
        teacher=SimpleNamespace(predict_logits=lambda t: np.zeros((len(t), 2), dtype=np.float32)),
        task=SimpleNamespace(dev=SimpleNamespace(texts=texts)),
    )


def _logits(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), -len(t)] for t in texts], dtype=np.float32)


def test_a_serving_form_with_the_students_logits_is_what_gets_timed() -> None:
    calls: list[str] = []

    def serving(texts: list[str]) -> np.ndarray:
        calls.append("serving")
        return _logits(texts)

    texts = [f"text {'x' * i}" for i in range(30)]
    out = latency_beside_teacher(_student(_logits, serving, form="folded"), _prep(texts))
    assert out["latency_b1_serving_form"] == 1.0
    assert len(calls) > LATENCY_ROUNDS  # timed, not only checked


def test_a_serving_form_that_disagrees_is_not_timed(caplog) -> None:
    """A wrong serving form (a bug) must not buy a speed-up: the module is timed and the mismatch reported."""
    calls: list[str] = []

    def wrong(texts: list[str]) -> np.ndarray:
        calls.append("wrong")
        return _logits(texts) + 1.0

    texts = [f"text {'x' * i}" for i in range(30)]
    out = latency_beside_teacher(_student(_logits, wrong, form="folded"), _prep(texts))
    assert out["latency_b1_serving_form"] == 0.0
    assert len(calls) <= 9  # the check's calls (a batch and 8 single texts), none timed
    assert "differ from the student's" in caplog.text
