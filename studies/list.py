"""``python -m studies.list``: every registered student type and its Optuna search space.

The search space is read by running each student's ``search_space`` against a recording trial,
so what is printed is exactly what Optuna searches, never a hand-kept copy.
"""

from __future__ import annotations

import sys
from typing import Any

from students.registry import available_students, get_student_class


class RecordingTrial:
    """Stands in for an Optuna trial: records each ``suggest_*`` call and answers with a valid value."""

    def __init__(self) -> None:
        self.space: dict[str, str] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> float:
        self.space[name] = f"float [{low:g}, {high:g}]" + (" log" if log else "") + (f" step {step:g}" if step else "")
        return low

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        self.space[name] = f"int [{low}, {high}]" + (" log" if log else "") + (f" step {step}" if step != 1 else "")
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.space[name] = "one of " + ", ".join(map(str, choices))
        return choices[0]


def describe_student(name: str) -> str:
    cls = get_student_class(name)
    trial = RecordingTrial()
    cls.search_space(trial)  # type: ignore[arg-type]
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = [f"{name}: {doc}"]
    lines += [f"    {param:<22} {space}" for param, space in trial.space.items()]
    return "\n".join(lines)


def main() -> int:
    for name in available_students():
        print(describe_student(name))
        print()
    print(
        "fix any of them with student.hparams.<name>=<value>; e.g. python -m studies.run student=cnn "
        "student.hparams.epochs=5"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
