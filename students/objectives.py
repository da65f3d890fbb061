"""The distillation objective shared by every neural student.

The loss is a weighted sum of terms, each switched on by a positive weight (a hyper-parameter
Optuna may search):

- ``kd``:   soft cross-entropy to the teacher's distribution at temperature T, scaled by T²
            (Hinton et al. 2015; equals KL up to the teacher's entropy, a constant);
- ``mse``:  mean squared error between student and teacher logits (Ba & Caruana 2014; Tang et al. 2019);
- ``ce``:   cross-entropy with the gold label, for examples that have one (label >= 0);
- ``hidden``: the student's sentence representation → one cached teacher layer, through a learned
            linear projection, MSE or cosine (FitNets; Kim & Rush 2016);
- ``nst``:  neuron-selectivity transfer (Huang & Wang 2017), see ``nst_loss``;
- ``ab``:   activation-boundary transfer (Heo et al. 2018), see ``ab_loss``;
- ``derivative``: derivative matching (Papamakarios 2015; Czarnecki et al. 2017, Sobolev training):
            the student's gradient × input attributions of its logits to its input tokens, by double
            backward, against the teacher's cached ones (``transfer/derivatives.py``), token by token;
- noisy teacher (Sau & Balasubramanian 2016): during training, with probability ``noise_prob`` per
            batch the teacher logits used by ``kd`` and ``mse`` become ``z ⊙ (1 + noise_scale·ε)``,
            ε ~ N(0, I) elementwise (the paper's multiplicative form: the noise is relative to each
            logit, so one scale suits teachers with large or small logits). Never at evaluation.

``hidden``, ``nst`` and ``ab`` all read the cached teacher layer ``hidden_layer`` and each has its
own learned linear projection of the student's sentence vector to the teacher's width (also when
the widths agree). Terms that need learned parameters (projections) make the objective an ``nn.Module``;
its parameters are trained with the student's and thrown away afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from transfer.derivatives import derivative_loss, gradient_times_input
from transfer.settings import FromMapping


@dataclass
class ObjectiveConfig(FromMapping):
    kd_weight: float = 1.0
    temperature: float = 2.0
    mse_weight: float = 0.0
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    hidden_layer: int = -1  # which cached teacher layer (index into activations; -1 = top)
    hidden_loss: str = "mse"  # "mse" | "cosine"
    nst_weight: float = 0.0  # neuron-selectivity transfer (MMD², polynomial kernel) on ``hidden_layer``
    ab_weight: float = 0.0  # activation-boundary transfer (sign hinge) on ``hidden_layer``
    ab_margin: float = 1.0  # μ of the activation-boundary hinge
    noise_prob: float = 0.0  # noisy teacher: probability that a training batch gets perturbed logits (0 = off)
    noise_scale: float = 0.1  # noisy teacher: σ of the relative Gaussian perturbation
    derivative_weight: float = 0.0  # derivative matching (needs a cache built with transfer.derivatives=true)

    @classmethod
    def hparam_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class StudentOutput:
    """What a neural student's forward returns."""

    logits: torch.Tensor  # [B, C]
    sentence: torch.Tensor  # [B, D] the representation fed to the classifier head
    layers: list[torch.Tensor] | None = None  # per-layer pooled states [B, D_l] (BERT-like students)
    embedded: torch.Tensor | None = None  # [B, T, E] word-embedding output (set by the loop for derivative matching)


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · CE(softmax(t/T), softmax(s/T)), averaged over the batch."""
    t = temperature
    target = F.softmax(teacher_logits / t, dim=-1)
    return -(target * F.log_softmax(student_logits / t, dim=-1)).sum(-1).mean() * t * t


def representation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between matched representations: 'mse' or 'cosine' (1 - cos)."""
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    raise ValueError(f"unknown representation loss {kind!r} (expected 'mse' or 'cosine')")


def perturb_logits(
    logits: torch.Tensor, scale: float, prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Noisy teacher: with probability ``prob`` return ``logits ⊙ (1 + scale·ε)``, else ``logits`` itself.

    One coin per call (i.e. per batch), as in Sau & Balasubramanian (2016). With ``prob <= 0`` or
    ``scale <= 0`` no random number is drawn, so runs without noise stay bit-identical.
    """
    if prob <= 0 or scale <= 0:
        return logits
    coin_device = generator.device if generator is not None else None
    if prob < 1 and float(torch.rand((), generator=generator, device=coin_device)) >= prob:
        return logits
    device = generator.device if generator is not None else logits.device
    noise = torch.randn(logits.shape, generator=generator, device=device, dtype=logits.dtype).to(logits.device)
    return logits * (1 + scale * noise)


def nst_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Neuron-selectivity transfer on sentence vectors: MMD² with the kernel k(x, y) = (xᵀy)².

    Huang & Wang (2017) treat each neuron's activation map over spatial positions as one sample
    and match the distributions of the student's and the teacher's neurons. Sentence-level pooled
    vectors have no spatial positions, so here a neuron's sample is its activation pattern across
    the batch: column j of ``[B, D]``, L2-normalised over the batch. With the polynomial kernel
    (d=2, c=0), MMD² = ‖G_s − G_t‖²_F where G = (1/D) Σ_j f_j f_jᵀ is a [B, B] matrix, which is
    how it is computed (O(B²D), no D×D kernel). The two sides may have different widths.
    """
    fs = F.normalize(student.float(), dim=0)
    ft = F.normalize(teacher.float(), dim=0)
    gs = fs @ fs.T / fs.shape[1]
    gt = ft @ ft.T / ft.shape[1]
    return ((gs - gt) ** 2).sum()


def ab_loss(student: torch.Tensor, teacher: torch.Tensor, margin: float) -> torch.Tensor:
    """Activation-boundary transfer (Heo et al. 2018) on pooled vectors, averaged over elements.

    ``ρ(T) ⊙ relu(μ − r(S))² + (1 − ρ(T)) ⊙ relu(μ + r(S))²`` with ρ the step function: the student's
    (projected) response must be ≥ μ where the teacher's neuron is active and ≤ −μ where it is not.
    The cached teacher vectors are mean-pooled LayerNorm outputs, not pre-ReLU responses, so their
    sign alone means little (each dimension has its own offset): both sides are centred per
    dimension over the batch, so "active" means "above this batch's mean". A batch of one has no
    such contrast and contributes zero.
    """
    if student.shape[0] < 2:
        return student.sum() * 0.0
    s = student.float() - student.float().mean(0, keepdim=True)
    t = teacher.float() - teacher.float().mean(0, keepdim=True)
    active = (t > 0).float()
    loss = active * F.relu(margin - s) ** 2 + (1 - active) * F.relu(margin + s) ** 2
    return loss.mean()


def _projection(student_dim: int, teacher_dim: int) -> nn.Linear:
    """The learned regressor from the student's sentence vector to the teacher's layer (FitNets).

    Always learned, also when the widths agree: student unit i has no reason to mean what
    teacher unit i means, and an identity would force it to. Being linear (unbounded), its
    output can also meet any activation-boundary margin, although a BiLSTM's or a tanh-bounded
    student's own activations never exceed 1.
    """
    return nn.Linear(student_dim, teacher_dim)


class DistillationObjective(nn.Module):
    """Callable loss: ``objective(output, batch) -> (loss, {term: value})``."""

    def __init__(self, config: ObjectiveConfig, student_dim: int, teacher_dim: int | None) -> None:
        super().__init__()
        self.config = config
        self.hidden_proj: nn.Module | None = None
        self.nst_proj: nn.Module | None = None
        self.ab_proj: nn.Module | None = None
        if config.ab_weight > 0 and config.ab_margin <= 0:
            raise ValueError(f"ab_margin must be positive (got {config.ab_margin}): it is the hinge's μ")
        for name in ("hidden", "nst", "ab"):
            if getattr(config, f"{name}_weight") > 0:
                if teacher_dim is None:
                    raise ValueError(f"{name}_weight > 0 needs a cache with teacher activations")
                setattr(self, f"{name}_proj", _projection(student_dim, teacher_dim))

    @property
    def needs_activations(self) -> bool:
        c = self.config
        return c.hidden_weight > 0 or c.nst_weight > 0 or c.ab_weight > 0

    @property
    def needs_derivatives(self) -> bool:
        """The batch must carry ``teacher_derivatives`` and ``derivative_mask``, the output ``embedded``."""
        return self.config.derivative_weight > 0

    def _teacher_layer(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        acts = batch["teacher_activations"]
        layer = self.config.hidden_layer
        if not -acts.shape[1] <= layer < acts.shape[1]:
            raise ValueError(f"hidden_layer={layer} but the cache holds {acts.shape[1]} teacher layers")
        return acts[:, layer].float()

    def forward(self, out: StudentOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        teacher_logits = batch["teacher_logits"]
        if self.training:
            teacher_logits = perturb_logits(teacher_logits, c.noise_scale, c.noise_prob)
        terms: dict[str, torch.Tensor] = {}
        if c.kd_weight > 0:
            terms["kd"] = c.kd_weight * soft_cross_entropy(out.logits, teacher_logits, c.temperature)
        if c.mse_weight > 0:
            terms["mse"] = c.mse_weight * F.mse_loss(out.logits, teacher_logits)
        if c.ce_weight > 0:
            labels = batch["labels"]
            has_label = labels >= 0
            if bool(has_label.any()):
                terms["ce"] = c.ce_weight * F.cross_entropy(out.logits[has_label], labels[has_label])
        if self.hidden_proj is not None:
            target = self._teacher_layer(batch)
            terms["hidden"] = c.hidden_weight * representation_loss(
                self.hidden_proj(out.sentence), target, c.hidden_loss
            )
        if self.nst_proj is not None:
            terms["nst"] = c.nst_weight * nst_loss(self.nst_proj(out.sentence), self._teacher_layer(batch))
        if self.ab_proj is not None:
            terms["ab"] = c.ab_weight * ab_loss(self.ab_proj(out.sentence), self._teacher_layer(batch), c.ab_margin)
        if c.derivative_weight > 0:
            if out.embedded is None or "teacher_derivatives" not in batch:
                raise ValueError("derivative_weight > 0 needs the student's embedded input and teacher derivatives")
            student = gradient_times_input(out.logits, out.embedded, create_graph=torch.is_grad_enabled())
            target = batch["teacher_derivatives"]
            terms["derivative"] = c.derivative_weight * derivative_loss(student, target, batch["derivative_mask"])
        if not terms:
            raise ValueError("the distillation objective has no term with a positive weight")
        loss = torch.stack(list(terms.values())).sum()
        return loss, {k: float(v.detach()) for k, v in terms.items()}


EXTRA_TERMS = ("hidden", "nst", "ab", "noise", "derivative", "prune")  # "prune": sparsity, not a loss term


def suggest_objective(trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
    """The shared part of every neural student's search space: how much of each signal to use.

    ``extras`` (``study.search_objectives``) adds optional terms to the search (any of
    ``EXTRA_TERMS``); without them only the logit/label terms are searched. ``prune`` is not a
    loss term: it searches the sparsity and structure of pruning during distillation. The ranges are starting
    points: ``nst`` is a bounded Gram-matrix distance (≤ 4) hence a larger weight, ``ab`` is ≈ μ²
    per wrong sign.
    """
    unknown = sorted(set(extras) - set(EXTRA_TERMS))
    if unknown:
        raise ValueError(f"unknown objective term(s) {unknown}; known: {', '.join(EXTRA_TERMS)}")
    params = {
        "kd_weight": trial.suggest_float("kd_weight", 0.0, 1.0),
        "temperature": trial.suggest_float("temperature", 1.0, 8.0, log=True),
        "mse_weight": trial.suggest_float("mse_weight", 0.0, 1.0),
        "ce_weight": trial.suggest_float("ce_weight", 0.0, 0.5),
    }
    if "hidden" in extras:
        params["hidden_weight"] = trial.suggest_float("hidden_weight", 0.0, 1.0)
        params["hidden_loss"] = trial.suggest_categorical("hidden_loss", ["mse", "cosine"])
    if "nst" in extras:
        params["nst_weight"] = trial.suggest_float("nst_weight", 0.1, 100.0, log=True)
    if "ab" in extras:
        params["ab_weight"] = trial.suggest_float("ab_weight", 1e-3, 1.0, log=True)
    if "noise" in extras:
        params["noise_prob"] = trial.suggest_float("noise_prob", 0.0, 1.0)
        params["noise_scale"] = trial.suggest_float("noise_scale", 0.01, 1.0, log=True)
    if "derivative" in extras:
        params["derivative_weight"] = trial.suggest_float("derivative_weight", 0.01, 10.0, log=True)
    if "prune" in extras:  # distillation with pruning (students/pruning.py): how much, and which structure
        params["sparsity"] = trial.suggest_float("sparsity", 0.0, 0.9)
        params["prune_structure"] = trial.suggest_categorical("prune_structure", ["structured", "unstructured"])
    return params
