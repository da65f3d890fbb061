"""Name → student class. ``@register("bilstm")`` on a class makes it available as ``student=bilstm``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from students.base import Student
from transfer.errors import unknown_name

_REGISTRY: dict[str, type[Student]] = {}

# Modules that register the built-in students when imported. A new student type is one file
# plus one line here.
BUILTIN_MODULES = ("students.bilstm", "students.forests", "students.cnn", "students.bert", "students.chain")


def register(name: str) -> Callable[[type[Student]], type[Student]]:
    def wrap(cls: type[Student]) -> type[Student]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"student {name!r} registered twice ({_REGISTRY[name]} and {cls})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def available_students() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_student_class(name: str) -> type[Student]:
    _load_builtins()
    if name not in _REGISTRY:
        raise unknown_name("student", name, list(_REGISTRY))
    return _REGISTRY[name]


def build_student(name: str, **hparams: object) -> Student:
    return get_student_class(name)(**hparams)
