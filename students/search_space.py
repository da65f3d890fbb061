"""Search spaces, seen from outside a student: constrain them, sample them, describe them, check fixed values.

A student declares its space once, in ``search_space(trial, extras)``. Everything else here wraps
the trial it is given, so the same declaration serves Optuna (sampling), ``studies.list``
(description) and setting validation (names and types), and never has to be copied by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from students.base import Student


class ConstrainedTrial:
    """A trial whose ``fixed`` values are returned instead of sampled, and whose names get ``prefix``.

    ``fixed`` is looked up by the student's own (unprefixed) name; everything else is suggested
    to the wrapped trial as ``prefix + name``. Wrapping a ConstrainedTrial in another composes:
    a chain link's proxy (prefix ``link0.``) checks the link's own fixed values, then the study's
    (which may fix ``link0.hidden_size`` by its full name).
    """

    def __init__(self, trial: Any, fixed: Mapping[str, Any] | None = None, prefix: str = "") -> None:
        self._trial = trial
        self.fixed: dict[str, Any] = dict(fixed or {})
        self.prefix = prefix

    def _suggest(self, kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self.fixed:
            return self.fixed[name]
        return getattr(self._trial, kind)(self.prefix + name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_float", name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_int", name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_categorical", name, *args, **kwargs)


@dataclass(frozen=True)
class ParamSpec:
    """One searched hyper-parameter: its kind and range (or choices), as ``search_space`` declared it."""

    kind: str  # "float" | "int" | "categorical"
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        bounds = f"[{self.low:g}, {self.high:g}]" if self.kind == "float" else f"[{self.low}, {self.high}]"
        text = f"{self.kind} {bounds}"
        return text + (" log" if self.log else "") + (f" step {self.step:g}" if self.step not in (None, 1) else "")


class RecordingTrial:
    """Stands in for an Optuna trial: records each ``suggest_*`` call and answers with a valid value."""

    def __init__(self) -> None:
        self.space: dict[str, ParamSpec] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> float:
        self.space[name] = ParamSpec("float", low, high, log, step)
        return low

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False, step: int = 1) -> int:
        self.space[name] = ParamSpec("int", low, high, log, step)
        return low

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.space[name] = ParamSpec("categorical", choices=tuple(choices))
        return choices[0]


def recorded_space(
    student_cls: type[Student], extras: Sequence[str] = (), fixed: Mapping[str, Any] | None = None
) -> dict[str, ParamSpec]:
    """Every parameter ``search_space`` suggests (first branch of each conditional), by its full name."""
    trial = RecordingTrial()
    student_cls.search_space(ConstrainedTrial(trial, fixed), tuple(extras))  # type: ignore[arg-type]
    return trial.space


def sample_hparams(
    student_cls: type[Student], trial: Any, fixed: Mapping[str, Any], extras: Sequence[str] = ()
) -> dict[str, Any]:
    """The trial's full hyper-parameters: searched ones from the space, fixed ones from the config."""
    return {**student_cls.search_space(ConstrainedTrial(trial, fixed), tuple(extras)), **fixed}  # type: ignore[arg-type]


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _expected_type(spec: ParamSpec | None, default: Any) -> type | None:
    if spec is not None and spec.kind == "int":
        return int
    if spec is not None and spec.kind == "float":
        return float
    if spec is not None and spec.choices:
        # a default of another type than the choices (a chain's links: a list, searched as "a,b" strings)
        # means the student accepts both forms: no single type to insist on
        kinds = {type(c) for c in spec.choices} | ({type(default)} if default is not None else set())
        return kinds.pop() if len(kinds) == 1 else None
    if default is not None and type(default) in _TYPE_NAMES:
        return type(default)
    return None


def _type_problem(value: Any, expected: type) -> str | None:
    """Why ``value`` cannot be used where ``expected`` is needed (None when it can)."""
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return None
    if expected is bool and isinstance(value, bool):
        return None
    if expected is str and isinstance(value, str):
        return None
    return f"expected {_TYPE_NAMES[expected]}, got {value!r}"


def check_fixed(
    student_cls: type[Student], fixed: Mapping[str, Any], extras: Sequence[str] = (), setting: str = "student.hparams"
) -> list[str]:
    """One message per fixed value this student cannot use: an unknown name (with the valid ones) or a wrong type.

    A misspelt name would otherwise be ignored while the real parameter is still searched, and a
    wrong type would only fail deep inside ``fit``, after the teacher and the cache were prepared.
    """
    problems: list[str] = []
    unknown = student_cls.unknown_hparams(list(fixed))
    space = recorded_space(student_cls, extras)
    if unknown:
        valid = sorted(student_cls.hparam_names() | set(space))
        problems.append(
            f"{student_cls.name} has no hyper-parameter {', '.join(map(repr, unknown))} "
            f"({setting}); valid names: {', '.join(valid)}"
        )
    defaults = student_cls.default_hparams()
    for name, value in fixed.items():
        if name in unknown or value is None:
            continue
        spec = space.get(name)
        expected = _expected_type(spec, defaults.get(name))
        if expected is not None and expected in _TYPE_NAMES:
            problem = _type_problem(value, expected)
            if problem:
                problems.append(f"{setting}.{name}: {problem}")
    return problems
