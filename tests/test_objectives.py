"""Every term of the distillation objective: minimal when the student equals the teacher, positive
otherwise, gradients reach the student (and the projections); noisy teacher; the search space."""

from __future__ import annotations

import math
from collections.abc import Callable

import optuna
import pytest
import torch
import torch.nn.functional as F

from students.objectives import (
    EXTRA_TERMS,
    DistillationObjective,
    ObjectiveConfig,
    StudentOutput,
    ab_loss,
    nst_loss,
    perturb_logits,
    soft_cross_entropy,
    suggest_objective,
)

B, C, H, LAYERS = 8, 3, 6, 3


def teacher_batch(seed: int = 0, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "teacher_logits": 3 * torch.randn(B, C, generator=g),
        "labels": labels if labels is not None else torch.arange(B) % C,
        "teacher_activations": torch.randn(B, LAYERS, H, generator=g) + 0.5,
    }


def output(logits: torch.Tensor, sentence: torch.Tensor) -> StudentOutput:
    return StudentOutput(logits=logits.clone().requires_grad_(True), sentence=sentence.clone().requires_grad_(True))


def objective(student_dim: int = H, **config: float | str) -> DistillationObjective:
    """The objective with its learned projections set to the identity where the widths allow.

    Projections are always learned (never a fixed identity); setting them to the identity here
    lets "a student equal to the teacher costs nothing" be checked exactly.
    """
    base: dict = {"kd_weight": 0.0}
    obj = DistillationObjective(ObjectiveConfig(**(base | config)), student_dim=student_dim, teacher_dim=H)
    with torch.no_grad():
        for name in ("hidden_proj", "nst_proj", "ab_proj"):
            projection = getattr(obj, name)
            if projection is not None and student_dim == H:
                projection.weight.copy_(torch.eye(H))
                projection.bias.zero_()
    return obj


def at_teacher(batch: dict[str, torch.Tensor], layer: int = -1) -> StudentOutput:
    """A student whose logits and sentence vector equal the teacher's."""
    return output(batch["teacher_logits"], batch["teacher_activations"][:, layer])


def elsewhere(batch: dict[str, torch.Tensor], seed: int = 1) -> StudentOutput:
    g = torch.Generator().manual_seed(seed)
    return output(torch.randn(B, C, generator=g), torch.randn(B, H, generator=g))


def assert_grads_reach_student(loss: torch.Tensor, out: StudentOutput, obj: DistillationObjective) -> None:
    loss.backward()
    grads = [g for g in (out.logits.grad, out.sentence.grad) if g is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    for p in obj.parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


# -- kd: soft cross-entropy = KL + teacher entropy (·T²) --------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_is_kl_plus_teacher_entropy_and_minimal_at_teacher(temperature: float) -> None:
    batch = teacher_batch()
    t = batch["teacher_logits"]
    p = F.softmax(t / temperature, -1)
    entropy = -(p * p.log()).sum(-1).mean() * temperature**2
    at = soft_cross_entropy(t, t, temperature)
    assert float(at) == pytest.approx(float(entropy), rel=1e-5)  # KL part is zero at equality
    other = elsewhere(batch).logits
    kl = soft_cross_entropy(other, t, temperature) - entropy
    direct = F.kl_div(F.log_softmax(other / temperature, -1), p, reduction="batchmean") * temperature**2
    assert float(kl) == pytest.approx(float(direct), rel=1e-4)
    assert float(kl) > 0
    shifted = t + 0.3 * torch.randn(B, C, generator=torch.Generator().manual_seed(3))
    assert float(soft_cross_entropy(shifted, t, temperature)) > float(at)
    assert float(soft_cross_entropy(t + 5.0, t, temperature)) == pytest.approx(float(at), rel=1e-5)  # shift-invariant


def test_kd_term_gradients() -> None:
    batch = teacher_batch()
    obj = objective(kd_weight=1.0)
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"kd"}
    assert_grads_reach_student(loss, out, obj)
    # at the teacher the gradient of the KL form vanishes
    at = at_teacher(batch)
    obj(at, batch)[0].backward()
    assert float(at.logits.grad.abs().max()) < 1e-6


# -- mse, ce -------------------------------------------------------------------------------------


def test_mse_zero_at_teacher_positive_elsewhere() -> None:
    batch = teacher_batch()
    obj = objective(mse_weight=1.0)
    assert float(obj(at_teacher(batch), batch)[0]) == 0.0
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"mse"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)


def test_ce_minimal_for_confident_correct_student_positive_otherwise() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, -1, -1])
    batch = teacher_batch(labels=labels)
    obj = objective(ce_weight=1.0)
    confident = 50.0 * F.one_hot(labels.clamp(min=0), C).float()
    assert float(obj(output(confident, torch.zeros(B, H)), batch)[0]) < 1e-6
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"ce"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)
    assert out.logits.grad is not None and float(out.logits.grad[6:].abs().sum()) == 0  # unlabelled rows ignored


def test_ce_alone_on_unlabelled_batch_has_no_term() -> None:
    batch = teacher_batch(labels=torch.full((B,), -1))
    with pytest.raises(ValueError, match="no term"):
        objective(ce_weight=1.0)(elsewhere(batch), batch)


# -- hidden, nst, ab -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_hidden_zero_at_teacher_positive_elsewhere(kind: str) -> None:
    batch = teacher_batch()
    obj = objective(hidden_weight=1.0, hidden_loss=kind, hidden_layer=1)
    assert float(obj(at_teacher(batch, layer=1), batch)[0]) == pytest.approx(0.0, abs=1e-6)
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"hidden"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)
    if kind == "cosine":  # scale-invariant
        scaled = output(batch["teacher_logits"], 3 * batch["teacher_activations"][:, 1])
        assert float(obj(scaled, batch)[0]) == pytest.approx(0.0, abs=1e-6)


def test_hidden_layer_out_of_range_is_a_clear_error() -> None:
    batch = teacher_batch()
    with pytest.raises(ValueError, match="hidden_layer=7"):
        objective(hidden_weight=1.0, hidden_layer=7)(elsewhere(batch), batch)


def naive_mmd2(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MMD² between the columns (neurons) of s and t, kernel (xᵀy)², by the textbook pairwise sums."""
    fs, ft = F.normalize(s, dim=0).T, F.normalize(t, dim=0).T

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((a @ b.T) ** 2).mean()

    return k(fs, fs) + k(ft, ft) - 2 * k(fs, ft)


def test_nst_is_the_mmd_with_polynomial_kernel() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(B, 5, generator=g), torch.randn(B, 9, generator=g)
    assert float(nst_loss(s, t)) == pytest.approx(float(naive_mmd2(s, t)), rel=1e-4)
    # a distribution over neurons: neuron order and per-neuron scale do not matter
    assert float(nst_loss(t[:, torch.randperm(9, generator=g)] * torch.rand(9, generator=g).add(0.5), t)) < 1e-6


def test_nst_zero_at_teacher_positive_elsewhere() -> None:
    batch = teacher_batch()
    obj = objective(nst_weight=1.0)
    assert float(obj(at_teacher(batch), batch)[0]) == pytest.approx(0.0, abs=1e-6)
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"nst"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)


def test_nst_and_ab_project_a_narrower_student() -> None:
    batch = teacher_batch()
    obj = objective(student_dim=4, nst_weight=1.0, ab_weight=1.0)
    assert obj.needs_activations
    assert len(list(obj.parameters())) == 4  # weight + bias of two linear projections
    g = torch.Generator().manual_seed(5)
    out = output(torch.randn(B, C, generator=g), torch.randn(B, 4, generator=g))
    loss, terms = obj(out, batch)
    assert set(terms) == {"nst", "ab"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)


def test_ab_zero_when_signs_agree_beyond_margin_positive_otherwise() -> None:
    batch = teacher_batch()
    t = batch["teacher_activations"][:, -1]
    # a tiny margin: only the sign of the centred response matters (a margin must be positive)
    assert float(objective(ab_weight=1.0, ab_margin=1e-9)(at_teacher(batch), batch)[0]) == pytest.approx(0.0)
    # margin 1: a student that agrees in sign and exceeds the margin everywhere costs nothing
    beyond = 100 * (t - t.mean(0)).sign()  # centred again, still ≥ 100·2/B > μ in the right direction
    obj = objective(ab_weight=1.0, ab_margin=1.0)
    assert float(obj(output(batch["teacher_logits"], beyond), batch)[0]) == 0.0
    # ... but equal to the teacher (centred values < μ somewhere) is penalised, and opposite signs more
    equal = float(obj(at_teacher(batch), batch)[0])
    opposite = float(obj(output(batch["teacher_logits"], -t), batch)[0])
    assert 0 < equal < opposite
    out = elsewhere(batch)
    loss, terms = obj(out, batch)
    assert set(terms) == {"ab"} and float(loss) > 0
    assert_grads_reach_student(loss, out, obj)


def test_ab_loss_centres_per_dimension_and_skips_single_example() -> None:
    t = torch.tensor([[10.0, -3.0], [12.0, -5.0]])  # raw signs constant; centred signs differ
    assert float(ab_loss(torch.tensor([[-1.0, 1.0], [1.0, -1.0]]), t, 1.0)) == 0.0
    assert float(ab_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), t, 1.0)) > 0
    single = torch.ones(1, 2, requires_grad=True)
    assert float(ab_loss(single, t[:1], 1.0)) == 0.0


@pytest.mark.parametrize("name", ["hidden", "nst", "ab"])
def test_representation_terms_need_activations(name: str) -> None:
    with pytest.raises(ValueError, match="teacher activations"):
        DistillationObjective(ObjectiveConfig(**{f"{name}_weight": 1.0}), student_dim=H, teacher_dim=None)


# -- noisy teacher ---------------------------------------------------------------------------------


def test_noise_prob_zero_is_identity_prob_one_changes_logits() -> None:
    logits = teacher_batch()["teacher_logits"]
    g = torch.Generator().manual_seed(0)
    assert perturb_logits(logits, 0.5, 0.0, g) is logits
    assert perturb_logits(logits, 0.0, 1.0, g) is logits
    noisy = perturb_logits(logits, 0.5, 1.0, g)
    assert noisy.shape == logits.shape and not torch.equal(noisy, logits)
    rel = (noisy / logits - 1).std()
    assert 0.25 < float(rel) < 1.0  # relative perturbation of scale ≈ 0.5
    hits = sum(perturb_logits(logits, 0.5, 0.3, g) is not logits for _ in range(400))
    assert 80 < hits < 160  # one coin per batch, p = 0.3


def test_noisy_teacher_only_while_training() -> None:
    batch = teacher_batch()
    obj = objective(mse_weight=1.0, noise_prob=1.0, noise_scale=0.5)
    obj.eval()
    assert float(obj(at_teacher(batch), batch)[0]) == 0.0
    obj.train()
    torch.manual_seed(0)
    loss = obj(at_teacher(batch), batch)[0]
    assert float(loss) > 0  # the student now differs from the perturbed targets
    assert torch.equal(batch["teacher_logits"], teacher_batch()["teacher_logits"])  # batch not modified
    quiet = objective(mse_weight=1.0, noise_prob=0.0, noise_scale=0.5).train()
    assert float(quiet(at_teacher(batch), batch)[0]) == 0.0


def test_noisy_kd_gradients_reach_student() -> None:
    batch = teacher_batch()
    obj = objective(kd_weight=1.0, noise_prob=1.0, noise_scale=0.3).train()
    out = at_teacher(batch)
    loss, _ = obj(out, batch)
    assert_grads_reach_student(loss, out, obj)


# -- config and search space -----------------------------------------------------------------------


def test_new_fields_are_hparams_and_off_by_default() -> None:
    names = ObjectiveConfig.hparam_names()
    assert {"nst_weight", "ab_weight", "ab_margin", "noise_prob", "noise_scale"} <= names
    cfg = ObjectiveConfig.from_mapping({"nst_weight": 2.0, "epochs": 3})
    assert cfg.nst_weight == 2.0 and cfg.ab_weight == 0.0 and cfg.noise_prob == 0.0
    assert not DistillationObjective(ObjectiveConfig(), student_dim=H, teacher_dim=None).needs_activations


def sample(fn: Callable[[optuna.Trial], dict]) -> dict:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    return fn(trial)


def test_suggest_objective_default_unchanged_and_extras() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert set(sample(suggest_objective)) == {"kd_weight", "temperature", "mse_weight", "ce_weight"}
    params = sample(lambda t: suggest_objective(t, extras=EXTRA_TERMS))
    expected = {"hidden_weight", "hidden_loss", "nst_weight", "ab_weight", "noise_prob", "noise_scale"}
    assert expected | {"derivative_weight", "sparsity", "prune_structure"} <= set(params)
    params.pop("derivative_weight")  # needs embedded inputs and teacher derivatives: tests/test_derivatives.py
    cfg = ObjectiveConfig.from_mapping(params)
    obj = DistillationObjective(cfg, student_dim=4, teacher_dim=H)
    loss, _ = obj(output(torch.randn(B, C), torch.randn(B, 4)), teacher_batch())
    assert math.isfinite(float(loss))
    with pytest.raises(ValueError, match="unknown objective term"):
        sample(lambda t: suggest_objective(t, extras=("fitnets",)))
