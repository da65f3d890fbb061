"""The shared preparation of every study, comparison and probe: task → teacher → transfer cache.

Everything here is cached: a second call with the same configuration loads the fine-tuned
teacher and the labelled transfer set from disk and never runs the teacher over the
transfer set again.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from students.base import DevSet
from studies.evaluate import evaluate_model
from teachers.finetune import FineTuneConfig, get_teacher
from teachers.model import Teacher
from transfer.augment import AugmentConfig
from transfer.cache import TransferCache, get_or_build_cache
from transfer.errors import KDError
from transfer.tasks import Task, load_task
from transfer.transfer_set import make_transfer_set

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    cfg: DictConfig
    task: Task
    teacher: Teacher
    cache: TransferCache
    teacher_metrics: dict[str, float]

    @property
    def metric(self) -> str:
        """What every choice is made on (Optuna's objective, early stopping, the best trial)."""
        return f"dev_{self.task.metric}"

    @property
    def report_metric(self) -> str:
        """What is reported (closing lines, tables): the test split, never used for a choice."""
        return f"test_{self.task.metric}"

    @property
    def teacher_label(self) -> str:
        """A short, name-safe label for the teacher (an id's or path's last part)."""
        name = Path(str(self.cfg.teacher.name).rstrip("/")).name
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)

    def dev_set(self) -> DevSet:
        task = self.task
        return DevSet(task.dev, lambda y_true, y_pred: task.score(y_true, y_pred)[task.metric])


def device_of(cfg: DictConfig) -> str | None:
    return None if cfg.device in (None, "auto") else str(cfg.device)


def load_configured_task(cfg: DictConfig) -> Task:
    options: dict[str, Any] = {}
    if cfg.task.name == "tsv":
        options = {"train": cfg.data.train, "dev": cfg.data.dev, "test": cfg.data.get("test")}
    data_dir = str(cfg.data.dir)
    if cfg.task.name != "tsv" and not Path(data_dir).is_dir():
        raise KDError(
            f"data folder {data_dir!r} does not exist; set data.dir=<folder> or the KD_DATA_DIR environment "
            "variable to the folder holding sst2/, cola/, trec/, sara/"
        )
    return load_task(str(cfg.task.name), data_dir, limit=cfg.data.limit, **options)


def teacher_config(cfg: DictConfig) -> FineTuneConfig:
    return FineTuneConfig.from_mapping(OmegaConf.to_container(cfg.teacher, resolve=True))  # type: ignore[arg-type]


def planned_teacher(cfg: DictConfig) -> str:
    """The fine-tuned teacher's key for these settings, without fine-tuning anything."""
    from teachers.finetune import planned_teacher_key

    task = load_configured_task(cfg)
    return planned_teacher_key(str(cfg.teacher.name), task, teacher_config(cfg), str(cfg.cache_dir))


def _teacher(cfg: DictConfig, task: Task) -> Teacher:
    """The fine-tuned teacher for these settings: from the cache, or fine-tuned once and cached."""
    return get_teacher(
        str(cfg.teacher.name),
        task,
        teacher_config(cfg),
        Path(str(cfg.cache_dir)),
        device=device_of(cfg),
        progress=bool(cfg.progress),
    )


def fine_tuned_teacher(cfg: DictConfig) -> tuple[Teacher, float]:
    """The teacher for these settings (fine-tuned once, cached) and its dev score, without labelling anything."""
    task = load_configured_task(cfg)
    teacher = _teacher(cfg, task)
    scores = teacher.record.get("dev_scores") or {}
    if task.metric not in scores:
        raise KDError(
            f"teacher {teacher.record.get('key')} has no dev {task.metric} on record; set teacher.select_epoch"
        )
    return teacher, float(scores[task.metric])


def prepare(cfg: DictConfig) -> Prepared:
    """Load the task, get (or fine-tune) the teacher, get (or build) the transfer cache, score the teacher."""
    task = load_configured_task(cfg)
    cache_root = Path(str(cfg.cache_dir))
    teacher = _teacher(cfg, task)
    limit = cfg.transfer.get("train_limit")
    transfer_task = replace(task, train=task.train.limit(int(limit))) if limit else task
    cache = get_or_build_cache(
        teacher,
        make_transfer_set(
            transfer_task,
            augment=AugmentConfig.from_mapping(cfg.transfer.get("augment"), mask_token=teacher.tokenizer.mask_token),
            extra=cfg.transfer.get("extra"),
            vocab_source=teacher,
        ),
        cache_root / "transfer",
        batch_size=int(cfg.transfer.label_batch_size),
        sort_by_length=bool(cfg.transfer.sort_by_length),
        derivatives=bool(cfg.transfer.get("derivatives", False)),
        progress=bool(cfg.progress),
    )
    metrics = evaluate_model(
        teacher.predict_logits,
        task,
        cache.dev_logits,
        teacher.n_params(),
        int(cfg.tracking.latency_samples),
        dev_logits=cache.dev_logits,  # the cache has them: the teacher does not label dev or test again
        teacher_test_logits=cache.test_logits,
        test_logits=cache.test_logits,
    )
    metrics["train_seconds"] = float(teacher.record.get("train_seconds", 0.0))
    return Prepared(cfg, task, teacher, cache, metrics)
