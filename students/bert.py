"""A small BERT student (Turc et al. 2019 "well-read students"; DistilBERT / PKD-style initialisation).

Built with transformers' ``BertConfig``/``BertModel``: depth, width, heads and feed-forward size
are hyper-parameters. With ``init="teacher"`` it starts from the fine-tuned teacher itself
(saved by the teacher under the cache's ``assets/teacher_model``): embeddings, a chosen subset of
its blocks (``layer_map``), pooler and classifier, so it begins close to the teacher and only has
to learn to do with fewer layers. That needs the teacher's width; otherwise (or for a non-BERT
teacher, or an old cache without the weights) it falls back to random init with a warning.

Besides the logit objective it can match the teacher's cached per-layer activations
(``layer_weight`` > 0; see ``students.layer_matching``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from students.bilstm import masked_pool
from students.layer_matching import LayerMatchingLoss, uniform_layer_map
from students.neural import NeuralStudent, StudentModule
from students.objectives import StudentOutput, suggest_objective
from students.pruning import select_linear
from students.registry import register

if TYPE_CHECKING:
    import numpy as np

    from transfer.cache import TransferCache

log = logging.getLogger(__name__)

LAYER_MAPS = ("uniform", "every_other", "first", "last")
RANDOM_HIDDEN = 256  # width of a randomly initialised student when hidden_size is not given


def default_heads(hidden: int) -> int:
    """The largest divisor of ``hidden`` not above hidden/64 (BERT's 64-wide heads), at least 1."""
    target = max(1, hidden // 64)
    return max(d for d in range(1, target + 1) if hidden % d == 0)


def teacher_layer_indices(kind: str, n_student: int, n_teacher: int) -> list[int]:
    """Which teacher block (0-based) initialises each student block.

    ``uniform``: the top block of each of ``n_student`` equal groups (PKD-skip; ends at the top);
    ``every_other``: blocks 1, 3, 5, ... (DistilBERT-like; the top when the student is half as deep);
    ``first`` / ``last``: the bottom / top ``n_student`` blocks. Indices past the teacher's depth
    are clamped (with a warning): a student deeper than the map allows repeats blocks.
    """
    if kind == "uniform":
        idx = [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]
    elif kind == "every_other":
        idx = [2 * i + 1 for i in range(n_student)]
    elif kind == "first":
        idx = list(range(n_student))
    elif kind == "last":
        idx = list(range(n_teacher - n_student, n_teacher))
    else:
        raise ValueError(f"unknown layer_map {kind!r} (expected one of {', '.join(LAYER_MAPS)})")
    clamped = [min(max(i, 0), n_teacher - 1) for i in idx]
    if clamped != idx:
        log.warning(
            "layer_map=%s needs teacher blocks %s but the teacher has %d; using %s", kind, idx, n_teacher, clamped
        )
    return clamped


def _copy_overlap(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Copy the overlapping leading rows (vocabularies / position tables may differ in length)."""
    if dst.shape[1:] != src.shape[1:]:
        raise ValueError(f"cannot copy a {tuple(src.shape)} tensor into {tuple(dst.shape)}")
    with torch.no_grad():
        if dst.dim() == 0:
            dst.copy_(src)
        else:
            rows = min(dst.shape[0], src.shape[0])
            dst[:rows].copy_(src[:rows])


class BertStudentModule(StudentModule):
    """BertModel → sentence vector (pooled [CLS] or mean) → linear head; reports every layer's pooled state."""

    def __init__(self, config: Any, num_labels: int, pooling: str, dropout: float) -> None:
        from transformers import BertModel

        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"unknown pooling {pooling!r} (expected 'cls' or 'mean')")
        self.pooling = pooling
        self.bert = BertModel(config, add_pooling_layer=pooling == "cls")
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.sentence_dim = int(config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> StudentOutput:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = [masked_pool(h, attention_mask, "mean") for h in out.hidden_states]
        sentence = out.pooler_output if self.pooling == "cls" else layers[-1]
        return StudentOutput(logits=self.classifier(self.dropout(sentence)), sentence=sentence, layers=layers)

    def word_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    # -- structured pruning: attention heads and feed-forward neurons (students.pruning) -------
    def unit_scores(self) -> dict[str, torch.Tensor]:
        """Per layer: each head's L2 norm (its query/key/value rows, its output columns); each FFN neuron's."""
        scores = {}
        for i, layer in enumerate(self.bert.encoder.layer):
            attn = layer.attention.self
            size = attn.attention_head_size
            qkv = sum(m.weight.detach().view(-1, size, m.in_features).pow(2).sum((1, 2)) for m in self._qkv(layer))
            out = layer.attention.output.dense.weight.detach().view(-1, attn.num_attention_heads, size)
            scores[f"heads{i}"] = (qkv + out.pow(2).sum((0, 2))).sqrt()
            ffn_in = layer.intermediate.dense.weight.detach().pow(2).sum(1)
            scores[f"ffn{i}"] = (ffn_in + layer.output.dense.weight.detach().pow(2).sum(0)).sqrt()
        return scores

    @staticmethod
    def _qkv(layer: nn.Module) -> list[nn.Linear]:
        attn = layer.attention.self
        return [attn.query, attn.key, attn.value]

    @torch.no_grad()
    def zero_units(self, pruned: dict[str, torch.Tensor]) -> None:
        """A head with zero value rows adds nothing; a neuron with zero input rows outputs GELU(0) = 0."""
        for i, layer in enumerate(self.bert.encoder.layer):
            heads = pruned.get(f"heads{i}")
            if heads is not None:
                size = layer.attention.self.attention_head_size
                rows = torch.nonzero(heads.repeat_interleave(size)).flatten()
                for m in self._qkv(layer):
                    m.weight[rows] = 0
                    m.bias[rows] = 0
                layer.attention.output.dense.weight[:, rows] = 0
            neurons = pruned.get(f"ffn{i}")
            if neurons is not None:
                layer.intermediate.dense.weight[neurons] = 0
                layer.intermediate.dense.bias[neurons] = 0
                layer.output.dense.weight[:, neurons] = 0

    def remove_units(self, keep: dict[str, torch.Tensor]) -> None:
        """Fewer heads (query/key/value rows, output columns) and a narrower feed-forward block per layer."""
        for i, layer in enumerate(self.bert.encoder.layer):
            attn = layer.attention.self
            heads = keep.get(f"heads{i}")
            if heads is not None:
                size = attn.attention_head_size
                rows = (heads.view(-1, 1) * size + torch.arange(size)).flatten()
                attn.query, attn.key, attn.value = (select_linear(m, rows=rows) for m in self._qkv(layer))
                layer.attention.output.dense = select_linear(layer.attention.output.dense, cols=rows)
                attn.num_attention_heads = len(heads)
                attn.all_head_size = len(heads) * size
            neurons = keep.get(f"ffn{i}")
            if neurons is not None:
                layer.intermediate.dense = select_linear(layer.intermediate.dense, rows=neurons)
                layer.output.dense = select_linear(layer.output.dense, cols=neurons)


@register("bert")
class BertStudent(NeuralStudent):
    """Small BERT; hyper-parameters: init (teacher|random), num_layers, layer_map, hidden_size, num_heads,
    intermediate_size, pooling, dropout, layer_weight, layer_loss.

    ``hidden_size``/``num_heads``/``intermediate_size`` of None mean: the teacher's under teacher
    init, else 256 wide with 64-wide heads and a 4x feed-forward.
    """

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self._pending: dict[str, Any] | None = None  # the plan made in _init_embedding, used by build_module

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "init": "teacher",
            "num_layers": 4,
            "layer_map": "uniform",
            "hidden_size": None,
            "num_heads": None,
            "intermediate_size": None,
            "pooling": "cls",
            "dropout": 0.1,
            "lr": 3e-4,
            "batch_size": 32,
            "warmup_ratio": 0.1,
            "layer_weight": 0.0,
            "layer_loss": "mse",
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        init = trial.suggest_categorical("init", ["teacher", "random"])
        space: dict[str, Any] = {"init": init, "num_layers": trial.suggest_int("num_layers", 1, 4)}
        if init == "teacher":
            space["layer_map"] = trial.suggest_categorical("layer_map", list(LAYER_MAPS))
            space["lr"] = trial.suggest_float("lr", 3e-5, 5e-4, log=True)
        else:
            space["hidden_size"] = trial.suggest_categorical("hidden_size", [128, 256])
            space["num_heads"] = trial.suggest_categorical("num_heads", [2, 4])
            space["intermediate_size"] = trial.suggest_categorical("intermediate_size", [256, 512, 1024])
            space["lr"] = trial.suggest_float("lr", 1e-4, 2e-3, log=True)
        return {
            **space,
            "pooling": trial.suggest_categorical("pooling", ["cls", "mean"]),
            "dropout": trial.suggest_float("dropout", 0.0, 0.3),
            "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64]),
            "layer_weight": trial.suggest_float("layer_weight", 0.0, 1.0),
            "layer_loss": trial.suggest_categorical("layer_loss", ["mse", "cosine"]),
            **suggest_objective(trial, extras),
        }

    # -- architecture ------------------------------------------------------------------------
    def _teacher_config(self, cache: TransferCache) -> tuple[Path, Any] | None:
        """The teacher's directory and config when ``init="teacher"`` can be honoured, else None."""
        from transformers import AutoConfig

        from teachers.model import TEACHER_MODEL_ASSET

        init = self.hparams["init"]
        if init == "random":
            return None
        if init != "teacher":
            raise ValueError(f"unknown init {init!r} (expected 'teacher' or 'random')")
        directory = cache.assets / TEACHER_MODEL_ASSET
        if not (directory / "config.json").is_file():
            log.warning("init=teacher: the cache has no %s (built before teachers saved it); random init", directory)
            return None
        config = AutoConfig.from_pretrained(str(directory))
        h = self.hparams
        reasons = []
        if config.model_type != "bert":
            reasons.append(f"the teacher is a {config.model_type!r}, not a BERT")
        if h["hidden_size"] is not None and int(h["hidden_size"]) != config.hidden_size:
            reasons.append(f"hidden_size={h['hidden_size']} differs from the teacher's {config.hidden_size}")
        if h["intermediate_size"] is not None and int(h["intermediate_size"]) != config.intermediate_size:
            reasons.append(f"intermediate_size={h['intermediate_size']} differs from the teacher's")
        if reasons:
            log.warning("init=teacher impossible (%s); random init instead", "; ".join(reasons))
            return None
        if h["num_heads"] is not None and int(h["num_heads"]) != config.num_attention_heads:
            log.warning(
                "init=teacher: using the teacher's %d heads, not num_heads=%s",
                config.num_attention_heads,
                h["num_heads"],
            )
        return directory, config

    def _plan(self, cache: TransferCache) -> dict[str, Any]:
        """The student's BertConfig fields, and which teacher blocks to copy (None = random init)."""
        h = self.hparams
        n_layers = int(h["num_layers"])
        dropout = float(h["dropout"])
        teacher = self._teacher_config(cache)
        if teacher is not None:
            directory, t = teacher
            config = {
                "hidden_size": t.hidden_size,
                "num_attention_heads": t.num_attention_heads,
                "intermediate_size": t.intermediate_size,
                "max_position_embeddings": t.max_position_embeddings,
                "type_vocab_size": t.type_vocab_size,
                "hidden_act": t.hidden_act,
                "layer_norm_eps": t.layer_norm_eps,
            }
            layers = teacher_layer_indices(str(h["layer_map"]), n_layers, int(t.num_hidden_layers))
            source: str | None = str(directory)
        else:
            hidden = int(h["hidden_size"] or RANDOM_HIDDEN)
            heads = int(h["num_heads"] or default_heads(hidden))
            config = {
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "intermediate_size": int(h["intermediate_size"] or 4 * hidden),
                "max_position_embeddings": max(512, int(h["max_length"])),
                "type_vocab_size": 2,
            }
            layers, source = None, None
        if config["hidden_size"] % config["num_attention_heads"]:
            raise ValueError(
                f"num_heads={config['num_attention_heads']} must divide hidden_size={config['hidden_size']}"
            )
        config |= {
            "num_hidden_layers": n_layers,
            "hidden_dropout_prob": dropout,
            "attention_probs_dropout_prob": dropout,
        }
        return {"config": config, "teacher_layers": layers, "source": source}

    def _init_embedding(self, cache: TransferCache) -> tuple[int, np.ndarray | None]:
        """Embedding width = hidden size; the teacher's WordPiece matrix only when it is as wide.

        Under teacher init the exact (not fp16) teacher embeddings are copied in ``build_module``.
        """
        self._pending = self._plan(cache)
        hidden = int(self._pending["config"]["hidden_size"])
        if self._pending["teacher_layers"] is None and self.hparams["embedding_init"] == "teacher":
            matrix = cache.embedding_matrix()
            if matrix is not None and matrix.shape[1] == hidden:
                return hidden, matrix
            if matrix is not None:
                log.info("teacher embeddings are %d wide, the student %d: random embeddings", matrix.shape[1], hidden)
        return hidden, None

    def build_module(
        self,
        vocab_size: int,
        num_labels: int,
        embedding_dim: int,
        pad_id: int,
        cache: TransferCache | None,
        bert: dict[str, Any] | None = None,
        teacher_layers: list[int] | None = None,
    ) -> BertStudentModule:
        from transformers import BertConfig

        plan: dict[str, Any] | None = None
        if bert is None:  # fitting: decide the architecture now and record it for loading
            assert cache is not None, "a new BERT student needs the cache to plan its architecture"
            plan = self._pending or self._plan(cache)
            bert = {**plan["config"], "vocab_size": vocab_size, "pad_token_id": pad_id}
            self.arch["bert"] = bert
            self.arch["teacher_layers"] = plan["teacher_layers"]
        module = BertStudentModule(
            BertConfig(**bert), num_labels, str(self.hparams["pooling"]), float(self.hparams["dropout"])
        )
        if plan is not None and plan["teacher_layers"] is not None:
            self._copy_teacher(module, Path(plan["source"]), plan["teacher_layers"])
        self._pending = None
        return module

    @staticmethod
    def _copy_teacher(module: BertStudentModule, directory: Path, layers: list[int]) -> None:
        """Embeddings, the mapped blocks, pooler and (if the label set matches) classifier from the teacher."""
        from transformers import AutoModelForSequenceClassification

        from teachers.model import quiet_transformers

        quiet_transformers()
        teacher = AutoModelForSequenceClassification.from_pretrained(str(directory))
        base = teacher.base_model
        student = module.bert
        source = dict(base.embeddings.state_dict())
        for name, tensor in student.embeddings.state_dict(keep_vars=True).items():
            if name in source:
                _copy_overlap(tensor, source[name])
        for i, t in enumerate(layers):
            student.encoder.layer[i].load_state_dict(base.encoder.layer[t].state_dict())
        if student.pooler is not None and getattr(base, "pooler", None) is not None:
            student.pooler.load_state_dict(base.pooler.state_dict())
            head = getattr(teacher, "classifier", None)
            if isinstance(head, nn.Linear) and head.weight.shape == module.classifier.weight.shape:
                module.classifier.load_state_dict(head.state_dict())
        log.info("initialised from the teacher's embeddings and blocks %s", layers)

    # -- objective ---------------------------------------------------------------------------
    def extra_objective(self, cache: TransferCache) -> nn.Module | None:
        """Layer matching against the cached activations when ``layer_weight`` > 0."""
        weight = float(self.hparams["layer_weight"])
        if weight <= 0:
            return None
        acts = cache.activations
        if acts is None:
            log.warning("layer_weight=%s but the cache holds no activations: no layer matching", weight)
            return None
        assert self.module is not None
        n_student = int(self.arch["bert"]["num_hidden_layers"])
        mapping = uniform_layer_map(n_student, int(acts.shape[1]) - 1)
        dims = [self.module.sentence_dim] * (n_student + 1)
        return LayerMatchingLoss(mapping, dims, int(acts.shape[-1]), weight, str(self.hparams["layer_loss"]))
