"""``python -m studies.list``: every registered student type and its Optuna search space.

The search space is read by running each student's ``search_space`` against a recording trial,
so what is printed is exactly what Optuna searches, never a hand-kept copy.
"""

from __future__ import annotations

import sys

from students.registry import available_students, get_student_class
from students.search_space import recorded_space


def describe_student(name: str) -> str:
    cls = get_student_class(name)
    doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
    lines = [f"{name}: {doc}"]
    lines += [f"    {param:<22} {spec.describe()}" for param, spec in recorded_space(cls).items()]
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
