"""A fitted student as a ``Labeler``: it can label a transfer set exactly like a teacher does.

This is what lets a teacher-assistant chain reuse the content-addressed cache unchanged: the
assistant's outputs become a cache keyed by the assistant's fingerprint, in the same format as
the teacher's, and the next student neither knows nor cares who labelled it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from students.base import Student
from transfer.errors import KDError


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link (cache files are never modified in place; teacher weights can be big), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class StudentLabeler:
    """Labels texts with a fitted student: its logits, and its sentence vector as a one-layer "activation".

    ``assets_from`` is the assets directory of the cache the student learned from; it is passed on
    (tokenizer, embedding matrix, teacher weights) so students further down a chain can still use
    the teacher's tokenizer and embeddings.
    """

    def __init__(self, student: Student, assets_from: Path | None = None) -> None:
        self.student = student
        self.assets_from = assets_from

    @cached_property
    def fingerprint(self) -> str:
        return self.student.fingerprint()

    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([len(text.split()) for text in texts])

    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        logits = np.asarray(self.student.predict_logits(texts), dtype=np.float32)
        represent = getattr(self.student, "sentence_representations", None)
        if represent is None:
            return logits, None
        return logits, np.asarray(represent(texts), dtype=np.float32)[:, None, :]

    def label_batch_with_derivatives(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, the sentence vector as one layer, and the student's own input derivatives (neural students)."""
        compute = getattr(self.student, "input_derivatives", None)
        if compute is None:
            raise KDError(
                f"a {self.student.name} student cannot compute input derivatives, so the next link of the chain "
                "cannot match them: set its derivative_weight=0"
            )
        logits, sentence, derivs = compute(texts)
        return logits, sentence[:, None, :], derivs

    def derivative_info(self) -> dict[str, object]:
        info = getattr(self.student, "derivative_info", None)
        if info is None:
            raise KDError(f"a {self.student.name} student cannot compute input derivatives")
        return info()

    def write_assets(self, directory: Path) -> None:
        if self.assets_from is not None and self.assets_from.is_dir():
            shutil.copytree(self.assets_from, directory, copy_function=_link_or_copy, dirs_exist_ok=True)
        else:
            directory.mkdir(parents=True, exist_ok=True)
