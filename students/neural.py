"""What every neural student shares: tokenisation, embedding initialisation, fit, predict, save/load.

A concrete neural student (BiLSTM, CNN, small BERT) only builds its ``nn.Module`` and declares
its search space. It reads text through the labeler's own tokenizer (stored in the cache), so a
student initialised from the teacher's WordPiece embeddings sees exactly the teacher's ids.
"""

from __future__ import annotations

import copy
import json
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from students.base import DevSet, ParamCount, Reporter, Student
from students.objectives import DistillationObjective, ObjectiveConfig, StudentOutput
from students.pruning import pack_sparse, remove_pruned, shrink_to_counts, unpack_sparse
from students.training import CombinedObjective, EmbeddingCapture, History, LoopConfig, TrainingData, train_loop
from transfer.batching import length_sorted_batches, pad_batch
from transfer.derivatives import FORM as DERIVATIVE_FORM
from transfer.derivatives import aligned_lengths, gradient_times_input, vocabulary_hash
from transfer.errors import KDError

if TYPE_CHECKING:
    from transfer.cache import TransferCache

PRUNING_ARCH = ("sparsity", "units")  # arch.json entries about pruning, not arguments of build_module


class StudentModule(nn.Module):
    """Base of the students' torch modules: forward(ids, mask) → StudentOutput."""

    sentence_dim: int

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StudentOutput: ...

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of lookup tables (token/position embeddings), excluded from non-embedding counts."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]

    def word_embeddings(self) -> nn.Embedding:
        """The WordPiece lookup whose output is the input x of derivative matching (∂logits/∂x)."""
        embedding = getattr(self, "embedding", None)
        if not isinstance(embedding, nn.Embedding):
            raise NotImplementedError(f"{type(self).__name__} must say which module is its word embedding")
        return embedding

    # Structured pruning (students.pruning): a module names its units by group, zeroes and removes them.
    def unit_scores(self) -> dict[str, torch.Tensor]:
        """Importance (L2 norm) of every prunable unit, by group; empty = no structured pruning."""
        return {}

    def zero_units(self, pruned: dict[str, torch.Tensor]) -> None:
        """Zero the weights of the pruned units (bool masks by group) so that their output is exactly 0."""
        raise NotImplementedError(f"{type(self).__name__} has no prunable units")

    def remove_units(self, keep: dict[str, torch.Tensor]) -> None:
        """Physically keep only the units ``keep`` lists (indices by group): a smaller, faster module."""
        raise NotImplementedError(f"{type(self).__name__} has no prunable units")


class NeuralStudent(Student):
    """A student that is a torch module trained by the shared loop on the shared objective."""

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.module: StudentModule | None = None
        self.tokenizer: Any = None
        self.arch: dict[str, Any] = {}
        self.history: History | None = None

    @property
    def device(self) -> torch.device:
        """The runtime's device (``device=`` of the study): never chosen behind the caller's back.

        An int8 student (``quantized``) runs on the CPU whatever the runtime says: its kernels are CPU ones.
        """
        return torch.device("cpu") if self.int8 else self.runtime.torch_device()

    @property
    def int8(self) -> bool:
        """Whether the Linear/LSTM layers run as dynamic int8 (an inference-only export, ``quantized``)."""
        return bool(self.arch.get("int8"))

    def quantized(self) -> NeuralStudent:
        """A CPU copy whose ``nn.Linear`` and ``nn.LSTM`` layers run in dynamic int8 (``students.export``).

        It predicts, saves and loads like any student (``arch.json`` records ``int8``); it cannot be fitted.
        """
        from students.export import quantize_int8

        assert self.module is not None, "fit or load the student first"
        twin = copy.copy(self)
        twin.hparams, twin.arch = dict(self.hparams), {**self.arch, "int8": True}
        twin.module = quantize_int8(self.module)
        return twin

    def _module_arch(self) -> dict[str, Any]:
        """The ``build_module`` arguments: ``arch`` less its export flag."""
        return {k: v for k, v in self.arch.items() if k != "int8"}

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """Loop and objective defaults come from their dataclasses (their one home); a student adds its own."""
        return {
            **asdict(LoopConfig()),
            **asdict(ObjectiveConfig()),
            "max_length": 64,
            "embedding_init": "teacher",  # "teacher" (the labeler's WordPiece matrix) | "random"
            "embedding_dim": 300,  # used with random init; teacher init takes the teacher's width
        }

    def fit_metrics(self) -> dict[str, float]:
        if self.history is None:
            return {}
        return {
            "best_epoch": float(self.history.best_epoch),
            "epochs_run": float(len(self.history.epochs)),
            "sparsity": float(self.arch.get("sparsity", 0.0)),
        }

    @abstractmethod
    def build_module(
        self, vocab_size: int, num_labels: int, embedding_dim: int, pad_id: int, cache: TransferCache | None
    ) -> StudentModule:
        """Create the untrained module; ``cache`` is None when loading saved weights."""

    def extra_objective(self, cache: TransferCache) -> nn.Module | None:
        """Hook: a loss module added to the shared objective (called after ``self.module`` is built).

        It is called like the objective, ``extra(output, batch) -> (loss, {term: value})``; a
        ``needs_activations`` attribute that is True puts ``teacher_activations`` in every batch.
        Its parameters (e.g. projections) train with the student's and are dropped afterwards.
        """
        return None

    # -- data -------------------------------------------------------------------------------
    def _load_tokenizer(self, directory: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(directory))

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        enc = self.tokenizer(
            list(texts), truncation=True, max_length=int(self.hparams["max_length"]), add_special_tokens=True
        )
        return [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def _init_embedding(self, cache: TransferCache) -> tuple[int, np.ndarray | None]:
        """(embedding dim, initial matrix or None) according to ``embedding_init``."""
        if self.hparams["embedding_init"] == "teacher":
            matrix = cache.embedding_matrix()
            if matrix is not None:
                return int(matrix.shape[1]), matrix
        return int(self.hparams["embedding_dim"]), None

    # -- Student interface -------------------------------------------------------------------
    def fit(self, cache: TransferCache, dev: DevSet | None = None, report: Reporter | None = None) -> NeuralStudent:
        self._load_tokenizer(cache.tokenizer_dir)
        dim, matrix = self._init_embedding(cache)
        self.arch = {"vocab_size": len(self.tokenizer), "num_labels": cache.num_labels, "embedding_dim": dim}
        torch.manual_seed(int(self.hparams["seed"]))
        self.module = self.build_module(**self.arch, pad_id=self.pad_id, cache=cache)
        if matrix is not None:
            emb = self.module.embedding_parameters()[0]
            rows = min(emb.shape[0], matrix.shape[0])
            with torch.no_grad():
                emb[:rows] = torch.from_numpy(np.asarray(matrix[:rows], dtype=np.float32))
        acts = cache.activations
        objective: DistillationObjective | CombinedObjective = DistillationObjective(
            ObjectiveConfig.from_mapping(self.hparams),
            student_dim=self.module.sentence_dim,
            teacher_dim=None if acts is None else int(acts.shape[-1]),
        )
        extra = self.extra_objective(cache)
        if extra is not None:
            objective = CombinedObjective([objective, extra])
        ids = self.encode(cache.texts)
        data = TrainingData(ids, np.asarray(cache.logits), cache.labels, acts)
        if float(self.hparams.get("derivative_weight", 0.0)) > 0:
            data.teacher_derivatives, data.derivative_lengths = self._derivative_targets(cache, ids)
        evaluate = None
        if dev is not None:
            dev_ids = self.encode(dev.split.texts)

            def evaluate() -> float:
                return dev.evaluate(self._logits_from_ids(dev_ids))

        self.history = train_loop(
            self.module,
            objective,
            data,
            LoopConfig.from_mapping(self.hparams),
            pad_id=self.pad_id,
            device=self.device,
            evaluate=evaluate,
            report=report,
            progress=self.runtime.progress,
        )
        self.arch["sparsity"] = self.history.sparsity
        if self.history.kept_units:  # structured pruning: drop the zeroed units for good
            self.arch["units"] = remove_pruned(self.module, self.history.kept_units)
            self.module.to(self.device).eval()
        return self

    def _derivative_targets(self, cache: TransferCache, ids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The cached teacher derivatives and, per text, how many leading tokens align with the teacher's.

        Alignment is token by token, so the student must read the teacher's WordPiece ids; a
        student whose ``max_length`` differs keeps the positions where both token sequences agree.
        """
        info, derivs = cache.derivative_info, cache.derivatives
        if info is None or derivs is None:
            raise KDError(
                "derivative_weight > 0 but the transfer cache holds no teacher derivatives: "
                "build it with transfer.derivatives=true"
            )
        mine = vocabulary_hash(self.tokenizer)
        if info.get("vocabulary") != mine:
            raise KDError(
                f"derivative matching aligns token by token with the teacher's WordPiece tokens, but {self.name} "
                f"tokenizes with another vocabulary ({mine} vs the teacher's {info.get('vocabulary')}): "
                "use the cache's tokenizer, or set derivative_weight=0"
            )
        enc = self.tokenizer(list(cache.texts), truncation=True, max_length=int(info["max_length"]))
        teacher_ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
        return derivs, aligned_lengths(ids, teacher_ids)

    @torch.no_grad()
    def _logits_from_ids(self, ids: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        assert self.module is not None, "fit or load the student first"
        self.module.eval()  # every call: a submodule swapped in later (pruning's narrower LSTM) starts in train mode
        if len(ids) == 1 and len(ids[0]) > 0:
            # The batch-1 path: no length sort, no padding, an all-ones mask (and no masked pooling
            # in the BiLSTM). On a 2-core CPU that saved about 0.1 ms of a BiLSTM's ~1.2 ms per text.
            input_ids = torch.from_numpy(ids[0]).unsqueeze(0).to(self.device)
            return self.module(input_ids, torch.ones_like(input_ids)).logits.float().cpu().numpy()
        out = np.zeros((len(ids), self.arch["num_labels"]), dtype=np.float32)
        for idx in length_sorted_batches(np.array([len(x) for x in ids]), batch_size):
            input_ids, mask = pad_batch([ids[i] for i in idx], self.pad_id, self.device)
            out[idx] = self.module(input_ids, mask).logits.float().cpu().numpy()
        return out

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._logits_from_ids(self.encode(texts))

    def input_derivatives(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits, sentence vectors and gradient × input per token and class [B, T, C] of one batch.

        What a student labelling for the next link of a chain gives, so that link can match derivatives too.
        """
        assert self.module is not None, "fit or load the student first"
        self.module.eval()
        input_ids, mask = pad_batch(self.encode(texts), self.pad_id, self.device)
        with torch.enable_grad(), EmbeddingCapture(self.module) as capture:
            out = self.module(input_ids, mask)
        assert capture.output is not None
        derivs = gradient_times_input(out.logits, capture.output)[:, : input_ids.shape[1]].detach()
        derivs = derivs * mask.unsqueeze(-1).to(derivs.dtype)
        return (
            out.logits.detach().float().cpu().numpy(),
            out.sentence.detach().float().cpu().numpy(),
            derivs.float().cpu().numpy(),
        )

    def derivative_info(self) -> dict[str, Any]:
        return {
            "form": DERIVATIVE_FORM,
            "max_length": int(self.hparams["max_length"]),
            "vocabulary": vocabulary_hash(self.tokenizer),
        }

    @torch.no_grad()
    def sentence_representations(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """The vector each text gets right before the classifier head (used by probing)."""
        assert self.module is not None
        ids = self.encode(texts)
        rows = []
        for start in range(0, len(ids), batch_size):
            input_ids, mask = pad_batch(ids[start : start + batch_size], self.pad_id, self.device)
            rows.append(self.module(input_ids, mask).sentence.float().cpu().numpy())
        return np.concatenate(rows)

    def n_params(self) -> ParamCount:
        assert self.module is not None
        total = sum(p.numel() for p in self.module.parameters())
        embedding = sum(p.numel() for p in self.module.embedding_parameters())
        return ParamCount(total=total, non_embedding=total - embedding)

    def _save_state(self, path: Path) -> None:
        assert self.module is not None
        state = self.module.state_dict()  # int8 (CPU only): as is, its version metadata tells how to load it
        # Unstructured sparsity only shrinks the file when stored sparse (CSR where smaller, see students.pruning).
        torch.save(state if self.int8 else pack_sparse({k: v.cpu() for k, v in state.items()}), path / "model.pt")
        (path / "arch.json").write_text(json.dumps(self.arch))
        self.tokenizer.save_pretrained(str(path / "tokenizer"))

    def _load_state(self, path: Path) -> None:
        self._load_tokenizer(path / "tokenizer")
        self.arch = json.loads((path / "arch.json").read_text())
        build = {k: v for k, v in self._module_arch().items() if k not in PRUNING_ARCH}
        self.module = self.build_module(**build, pad_id=self.pad_id, cache=None)
        if self.arch.get("units"):
            shrink_to_counts(self.module, self.arch["units"])
        if self.int8:
            from students.export import quantize_int8

            self.module = quantize_int8(self.module)
        # int8 layers hold packed-parameter objects that only a full unpickling restores: load
        # such a student only from a source you trust (as any forest student, a joblib pickle).
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=not self.int8)
        # (int8 states keep their version metadata: a rebuilt dict would lose it, and they are never packed sparse)
        self.module.load_state_dict(state if self.int8 else unpack_sparse(state))
        self.module.to(self.device).eval()

    def with_runtime(self, device: str | None = None, progress: bool = False) -> NeuralStudent:
        super().with_runtime(device, progress)
        if self.module is not None:  # a loaded student follows its new device
            self.module.to(self.device)
        return self
