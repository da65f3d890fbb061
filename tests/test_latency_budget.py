"""Side-by-side latency spends its sample budget on texts, not calls: batch timing stays cheap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from studies.measure import LATENCY_ROUNDS, latency_beside_teacher


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
    out = latency_beside_teacher(SimpleNamespace(predict_logits=student), prep, batch_size=1)
    assert out["latency_ms_b1"] > 0 and len(student_calls) == LATENCY_ROUNDS * (2 + 64 // LATENCY_ROUNDS)
    teacher_calls.clear(), student_calls.clear()
    latency_beside_teacher(SimpleNamespace(predict_logits=student), prep, batch_size=64)
    assert student_calls == teacher_calls == [64] * (LATENCY_ROUNDS * 2)  # one warm-up and one timed call a round
