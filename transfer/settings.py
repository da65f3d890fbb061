"""Settings dataclasses built from config mappings that also hold keys meant for others.

A student's hyper-parameters feed several settings objects at once (training loop, objective,
featuriser); each takes the keys it knows and leaves the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T", bound="FromMapping")


class FromMapping:
    """Mixin for dataclasses: ``Cls.from_mapping(values)`` keeps only the fields ``Cls`` declares."""

    @classmethod
    def from_mapping(cls: type[T], values: Mapping[str, Any]) -> T:
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in values.items() if k in names})
