"""The transfer set: the texts the teacher labels for the students (training split, for now)."""

from __future__ import annotations

import numpy as np

from transfer.cache import TransferSet
from transfer.tasks import Task


def make_transfer_set(task: Task) -> TransferSet:
    """The training split plus the dev split the cache also labels (for agreement and early stopping)."""
    return TransferSet(
        texts=list(task.train.texts),
        labels=np.asarray(task.train.labels, dtype=np.int64),
        dev_texts=list(task.dev.texts),
        dev_labels=np.asarray(task.dev.labels, dtype=np.int64),
        label_names=list(task.labels),
        task=task.name,
        description={"source": "train"},
    )
