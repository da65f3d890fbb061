"""Hydra configuration: compose ``studies/conf`` with ``key=value`` overrides from the command line.

We use Hydra's compose API rather than ``@hydra.main`` so that Hydra never changes the working
directory or writes output folders, and so that a mistyped option becomes one clear line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from transfer.errors import KDError

CONF_DIR = Path(__file__).parent / "conf"
GROUPS = ("task", "teacher", "student")
FREE_KEYS = ("student.hparams.", "student.links")  # keys users may add without Hydra's '+' prefix


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _normalise(override: str) -> str:
    key = override.split("=", 1)[0]
    if any(key.startswith(prefix) for prefix in FREE_KEYS) and not key.startswith(("+", "~")):
        return "++" + override
    return override


def compose(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The resolved configuration for ``overrides`` (raises KDError on unknown groups/keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    for override in overrides:
        if "=" not in override:
            raise KDError(f"cannot parse argument {override!r}: expected key=value (e.g. student=bilstm)")
        key, value = override.split("=", 1)
        if key in GROUPS and value not in group_options(key):
            raise KDError(f"unknown {key} {value!r}; known {key}s: {', '.join(group_options(key))}")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=[_normalise(o) for o in overrides])
    except (HydraException, OmegaConfBaseException) as err:
        raise KDError(f"bad configuration override: {str(err).splitlines()[0]}") from err
    OmegaConf.resolve(cfg)
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
