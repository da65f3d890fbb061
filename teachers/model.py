"""A fine-tuned teacher: an ``AutoModelForSequenceClassification`` that labels texts for the cache.

It implements the cache's ``Labeler`` protocol: logits plus the mean-pooled hidden state of
every layer (the embeddings' output is layer 0), in length-sorted batches.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from transfer.batching import length_sorted_batches
from transfer.derivatives import FORM, gradient_times_input, vocabulary_hash
from transfer.fingerprint import hash_dir

TRAINING_RECORD = "kd_teacher.json"  # how the teacher was made; not part of its fingerprint
TEACHER_MODEL_ASSET = "teacher_model"  # under a cache's assets/: the teacher's config + weights


def quiet_transformers() -> None:
    """Hide load reports and hub chatter; our own messages say what matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class Teacher:
    """Loads a fine-tuned teacher directory; labels, predicts and counts parameters."""

    def __init__(self, path: str | Path, max_length: int = 128, device: str | torch.device | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        quiet_transformers()
        self.path = Path(path)
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(self.path)).to(self.device).eval()
        record = self.path / TRAINING_RECORD
        self.record: dict = json.loads(record.read_text()) if record.exists() else {}

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the weights, config and tokenizer files (what decides the teacher's outputs)."""
        return "teacher-" + hash_dir(self.path, exclude=(TRAINING_RECORD,)) + f"-L{self.max_length}"

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    # -- Labeler protocol ----------------------------------------------------------------------
    def text_lengths(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return np.array([len(x) for x in enc["input_ids"]])

    @torch.no_grad()
    def label_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        out = self.model(**enc, output_hidden_states=True)
        pooled = torch.stack([mean_pool(h, enc["attention_mask"]) for h in out.hidden_states], dim=1)
        return out.logits.float().cpu().numpy(), pooled.float().cpu().numpy()

    def label_batch_with_derivatives(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``label_batch`` plus gradient × input of every logit w.r.t. the word embeddings, [B, T, C], in one pass.

        One forward with gradients, then one backward per class (``transfer.derivatives``);
        the logits and activations are those of that same forward.
        """
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        with torch.enable_grad():
            inputs = self.model.get_input_embeddings()(enc["input_ids"]).detach().requires_grad_(True)
            rest = {k: v for k, v in enc.items() if k != "input_ids"}
            out = self.model(inputs_embeds=inputs, **rest, output_hidden_states=True)
            derivatives = gradient_times_input(out.logits, inputs).detach()
        mask = enc["attention_mask"]
        pooled = torch.stack([mean_pool(h.detach(), mask) for h in out.hidden_states], dim=1)
        derivatives = derivatives * mask.unsqueeze(-1).to(derivatives.dtype)  # exactly 0 past a text's end
        return (
            out.logits.detach().float().cpu().numpy(),
            pooled.float().cpu().numpy(),
            derivatives.float().cpu().numpy(),
        )

    def derivative_info(self) -> dict[str, object]:
        """What a student needs to align with the cached derivatives: their form, width and the vocabulary."""
        return {"form": FORM, "max_length": self.max_length, "vocabulary": vocabulary_hash(self.tokenizer)}

    def write_assets(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory / "tokenizer"))
        table = self.model.get_input_embeddings().weight.detach().cpu().numpy().astype(np.float16)
        np.save(directory / "embeddings.npy", table)
        # The full fine-tuned teacher (config + weights), so a student can start from its layers.
        self.model.save_pretrained(str(directory / TEACHER_MODEL_ASSET))

    # -- inference used for evaluation -----------------------------------------------------------
    def predict_logits(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Logits only (no hidden states), in length-sorted batches; one text skips the sorting."""
        if len(texts) == 1:
            return self._logits_only(texts)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        for idx in length_sorted_batches(self.text_lengths(texts), batch_size):
            out[idx] = self._logits_only([texts[i] for i in idx])
        return out

    @torch.no_grad()
    def _logits_only(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        )
        return self.model(**enc.to(self.device)).logits.float().cpu().numpy()

    def n_params(self) -> tuple[int, int]:
        """(total, non-embedding): embeddings = word, position and token-type tables."""
        total = sum(p.numel() for p in self.model.parameters())
        embedding = sum(m.weight.numel() for m in self.model.modules() if isinstance(m, torch.nn.Embedding))
        return total, total - embedding
