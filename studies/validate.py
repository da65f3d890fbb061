"""Check every setting before any costly work starts (fine-tuning, labelling, training).

A typo or a value of the wrong type must be one clear line naming the setting and what it
expects, not a traceback twenty minutes later from deep inside a student.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transfer.errors import KDError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int_at_least(low: int, optional: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_int(value) or value < low:
            return f"expected an integer ≥ {low}" + (" (or null)" if optional else "")
        return None

    return check


def _positive_number(optional: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if not _is_number(value) or value <= 0:
            return "expected a positive number" + (" (or null)" if optional else "")
        return None

    return check


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def _device(value: Any) -> str | None:
    if value in (None, "auto", "cpu", "cuda", "mps") or re.fullmatch(r"cuda:\d+", str(value)):
        return None
    return "expected auto, cpu, cuda, cuda:<index> or mps"


def _seeds(value: Any) -> str | None:
    if _is_int(value) and value >= 1:
        return None
    if isinstance(value, list) and value and all(_is_int(v) for v in value) and len(set(value)) == len(value):
        return None
    return "expected a count ≥ 1 or a list of distinct integer seeds"


def _model_name(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}", value)):
        return None
    return "expected null or a registered-model name (letters, digits, '_', '.', '-')"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "expected true or false"


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "seed": _int_at_least(0),
    "device": _device,
    "progress": _bool,
    "data.limit": _int_at_least(3, optional=True),
    "transfer.train_limit": _int_at_least(1, optional=True),
    "transfer.label_batch_size": _int_at_least(1),
    "transfer.augment.n": _int_at_least(0),
    "transfer.derivatives": _bool,
    "study.n_trials": _int_at_least(1),
    "study.timeout": _positive_number(optional=True),
    "study.sampler": _one_of("tpe", "random"),
    "study.pruner": _one_of("median", "hyperband", "none"),
    "study.enqueue_defaults": _bool,
    "study.warm_start": _int_at_least(0),
    "study.min_speedup": _positive_number(optional=True),
    "study.heartbeat_interval": _int_at_least(1),
    "tracking.log_models": _one_of("best", "none"),
    "tracking.latency_samples": _int_at_least(1),
    "tracking.register": _model_name,
    "deploy.export": _one_of("int8", "folded"),
    "deploy.vocab": _one_of("all", "transfer"),
    "deploy.dtype": _one_of("float32", "float16"),
    "teacher.epochs": _positive_number(),
    "teacher.lr": _positive_number(),
    "teacher.batch_size": _int_at_least(1),
    "teacher.max_length": _int_at_least(8),
    "teacher.seed": _int_at_least(0),
    "compare.seeds": _seeds,
    "compare.batch_latency": _int_at_least(1),
}


def check_settings(cfg: DictConfig) -> list[str]:
    """One message per setting with a wrong type or range (general settings, not the student's)."""
    problems = []
    for key, check in CHECKS.items():
        value = OmegaConf.select(cfg, key, default="__missing__")
        if value == "__missing__":
            continue
        problem = check(value)
        if problem:
            problems.append(f"{key}={value!r}: {problem}")
    extras = cfg.study.get("search_objectives") or []
    from students.objectives import EXTRA_TERMS

    unknown = sorted(set(extras) - set(EXTRA_TERMS))
    if unknown:
        known = ", ".join(EXTRA_TERMS)
        problems.append(f"study.search_objectives: unknown term(s) {', '.join(unknown)}; known: {known}")
    if "derivative" in extras and not cfg.transfer.get("derivatives", False):
        problems.append(
            "study.search_objectives contains derivative, which needs the teacher's input derivatives in the cache: "
            "add transfer.derivatives=true"
        )
    floors = cfg.get("compare", {}).get("min_speedup") or {}
    if not OmegaConf.is_dict(floors) and not isinstance(floors, dict):
        problems.append(
            f"compare.min_speedup={floors!r}: expected a mapping of student to speed-up, e.g. {{bilstm:10}}"
        )
    elif any(not _is_number(v) or v <= 0 for v in floors.values()):
        problems.append(f"compare.min_speedup={dict(floors)!r}: expected positive speed-ups, e.g. {{bilstm:10}}")
    else:
        from students.registry import available_students

        unknown = sorted(str(k) for k in floors if str(k) not in available_students())
        if unknown:  # a misspelt student would silently compare without its floor
            known = ", ".join(available_students())
            problems.append(f"compare.min_speedup: unknown student(s) {', '.join(unknown)}; known: {known}")
    named = cfg.get("compare", {}).get("studies")
    if named is not None and not isinstance(named, str | list | tuple) and not OmegaConf.is_list(named):
        problems.append(f"compare.studies={named!r}: expected study names, e.g. [sara-minilm-cnn-1a2b3c]")
    sparsities = cfg.get("compare", {}).get("sparsities") or []
    if not isinstance(sparsities, list | tuple) and not OmegaConf.is_list(sparsities):
        problems.append(f"compare.sparsities={sparsities!r}: expected a list of numbers in (0, 1)")
    elif any(not _is_number(v) or not 0 < v < 1 for v in sparsities):
        problems.append(f"compare.sparsities={list(sparsities)!r}: expected numbers in (0, 1)")
    return problems


def check_student(cfg: DictConfig, fixed: dict[str, Any]) -> list[str]:
    """The student's name, and the names and types of the hyper-parameters the config fixes."""
    from students.objectives import EXTRA_TERMS
    from students.registry import get_student_class
    from students.search_space import check_fixed

    student_cls = get_student_class(str(cfg.student.name))  # an unknown name is a KDError listing the known ones
    extras = tuple(e for e in (cfg.study.get("search_objectives") or ()) if e in EXTRA_TERMS)  # others: reported
    return check_fixed(student_cls, fixed, extras)


def validate(cfg: DictConfig, fixed: dict[str, Any] | None = None) -> None:
    """Raise one KDError listing every problem with the settings (nothing has been computed yet)."""
    problems = check_settings(cfg)
    if fixed is not None:
        problems += check_student(cfg, fixed)
        sparsity = fixed.get("sparsity")
        if sparsity is not None and (not _is_number(sparsity) or not 0 <= sparsity < 1):
            problems.append(f"student.hparams.sparsity={sparsity!r}: expected a number in [0, 1)")
        structure = fixed.get("prune_structure")
        if structure is not None and structure not in ("structured", "unstructured"):
            problems.append(f"student.hparams.prune_structure={structure!r}: expected structured or unstructured")
        weight = fixed.get("derivative_weight")
        if _is_number(weight) and weight > 0 and not cfg.transfer.get("derivatives", False):
            problems.append(
                "student.hparams.derivative_weight > 0 needs the teacher's input derivatives in the cache: "
                "add transfer.derivatives=true"
            )
    if problems:
        raise KDError("bad settings:\n  " + "\n  ".join(problems))
