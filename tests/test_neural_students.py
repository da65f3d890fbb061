"""The neural students (BiLSTM, CNN, small BERT, teacher-assistant chain) behind the one Student interface.

Every student is fitted once (module scope, one epoch, tiny sizes) on the session's tiny cache;
the tests then check shapes, save/load round trips, parameter counts, search spaces, the BERT's
initialisation from the teacher, layer matching, and that a chain's second link really learns
from the assistant's outputs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from students.base import DevSet, Student
from students.registry import available_students, build_student, get_student_class
from transfer.cache import TransferCache

FAST = {"epochs": 1, "batch_size": 32, "max_length": 32}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bilstm": ("bilstm", {"hidden_size": 16, "mlp_dim": 16}),
    "cnn": ("cnn", {"n_filters": 8, "mlp_dim": 16, "widths": "2,3,4"}),
    "bert-random": (
        "bert",
        {"init": "random", "num_layers": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 64,
         "layer_weight": 0.5},
    ),
    "bert-teacher": ("bert", {"init": "teacher", "num_layers": 1, "layer_weight": 0.5, "layer_loss": "cosine"}),
    "chain": (
        "chain",
        {"links": ["bilstm", "cnn"], "link0.hidden_size": 16, "link0.mlp_dim": 16, "link1": {"n_filters": 8}},
    ),
}  # fmt: skip


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float((np.asarray(y_true) == np.asarray(y_pred)).mean())


@pytest.fixture(scope="module")
def dev_set(tiny_task) -> DevSet:
    return DevSet(tiny_task.dev, accuracy)


@pytest.fixture(scope="module")
def private_cache(tiny_cache, tmp_path_factory: pytest.TempPathFactory) -> TransferCache:
    """A copy of the shared tiny cache in its own root, so the chain's assistant caches stay out of the shared one."""
    root = tmp_path_factory.mktemp("neural_transfer")
    shutil.copytree(tiny_cache.path, root / tiny_cache.path.name)
    return TransferCache(root / tiny_cache.path.name)


@pytest.fixture(scope="module")
def fitted_chain(private_cache: TransferCache, dev_set: DevSet) -> dict[str, Any]:
    """A bilstm → cnn chain fitted with spies on each link's fit (no tracker: students never log)."""
    bilstm_cls, cnn_cls = get_student_class("bilstm"), get_student_class("cnn")
    received: dict[str, TransferCache] = {}

    def spy(cls: type[Student], key: str) -> Any:
        original = cls.fit

        def fit(self: Student, cache: TransferCache, *args: Any, **kwargs: Any) -> Student:
            received[key] = cache
            return original(self, cache, *args, **kwargs)

        return fit

    name, hparams = CONFIGS["chain"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bilstm_cls, "fit", spy(bilstm_cls, "first"))
        mp.setattr(cnn_cls, "fit", spy(cnn_cls, "second"))
        chain = build_student(name, **FAST, **hparams).fit(private_cache, dev_set)
    return {"chain": chain, "received": received}


@pytest.fixture(scope="module", params=list(CONFIGS))
def fitted(request: pytest.FixtureRequest, private_cache: TransferCache, dev_set: DevSet) -> tuple[str, Student]:
    if request.param == "chain":
        return request.param, request.getfixturevalue("fitted_chain")["chain"]
    name, hparams = CONFIGS[request.param]
    return request.param, build_student(name, **FAST, **hparams).fit(private_cache, dev_set)


# -- the interface, for every student ------------------------------------------------------------


def test_registry_has_the_neural_students() -> None:
    assert {"bilstm", "cnn", "bert", "chain"} <= set(available_students())


def test_predicts_logits_for_every_text(fitted: tuple[str, Student], tiny_task) -> None:
    _, student = fitted
    texts = [*tiny_task.dev.texts, "great", ""]  # one- and zero-word texts: shorter than any CNN filter
    logits = student.predict_logits(texts)
    assert logits.shape == (len(texts), tiny_task.num_labels)
    assert np.isfinite(logits).all()


def test_save_load_round_trip(fitted: tuple[str, Student], tiny_task, tmp_path: Path) -> None:
    key, student = fitted
    loaded = Student.load(student.save(tmp_path / key))
    assert type(loaded) is type(student)
    texts = tiny_task.dev.texts
    assert np.allclose(loaded.predict_logits(texts), student.predict_logits(texts), atol=1e-5)
    assert loaded.n_params() == student.n_params()


def test_parameter_counts(fitted: tuple[str, Student]) -> None:
    key, student = fitted
    count = student.n_params()
    assert 0 < count.non_embedding <= count.total
    if key.startswith("bert") or key in ("bilstm", "cnn"):
        assert count.non_embedding < count.total  # the token table (and BERT's positions) is excluded
    if key == "chain":
        assert count == student.links[-1].n_params()  # the deployed (last) link


def test_cnn_output_does_not_depend_on_batch_padding(private_cache: TransferCache) -> None:
    student = build_student("cnn", **FAST, **{**CONFIGS["cnn"][1], "widths": "3,4,5"}).fit(private_cache)
    alone = student.predict_logits(["great"])  # shorter than the widest filter: padded to it
    padded = student.predict_logits(["the film was great and the acting was lovely too", "great"])[1:]
    assert np.allclose(alone, padded, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "fixed"),
    [
        ("bilstm", {}),
        ("cnn", {}),
        ("bert", {"init": "random"}),
        ("bert", {"init": "teacher"}),
        ("chain", {"links": ["bilstm", "cnn"], "link1": {"widths": "1,2,3"}}),
    ],
)
def test_search_space_samples_trainable_students(
    name: str, fixed: dict[str, Any], private_cache: TransferCache
) -> None:
    import optuna

    from students.search_space import sample_hparams

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3), direction="maximize")
    trial = study.ask()
    hparams = sample_hparams(get_student_class(name), trial, fixed)
    if name == "chain":
        assert trial.params and all(p.startswith(("link0.", "link1.")) for p in trial.params)
        assert "link1.widths" not in trial.params and hparams["link1"]["widths"] == "1,2,3"
    student = build_student(name, **{**hparams, **FAST}).fit(private_cache)
    assert student.predict_logits(["a lovely film"]).shape == (1, private_cache.num_labels)


# -- BERT: initialisation from the teacher --------------------------------------------------------


@pytest.mark.parametrize(("layer_map", "teacher_layer"), [("first", 0), ("last", 1), ("uniform", 1)])
def test_bert_teacher_init_copies_the_mapped_layer(
    layer_map: str, teacher_layer: int, private_cache: TransferCache
) -> None:
    from transformers import AutoModelForSequenceClassification

    student = build_student("bert", init="teacher", num_layers=1, layer_map=layer_map, **{**FAST, "epochs": 0})
    student.fit(private_cache)  # zero epochs: the weights right after initialisation
    teacher = AutoModelForSequenceClassification.from_pretrained(str(private_cache.assets / "teacher_model"))
    copied = student.module.bert.encoder.layer[0].state_dict()
    source = teacher.base_model.encoder.layer[teacher_layer].state_dict()
    assert copied.keys() == source.keys()
    assert all(torch.equal(copied[k], source[k]) for k in source)
    word = student.module.bert.embeddings.word_embeddings.weight
    assert torch.equal(word, teacher.base_model.embeddings.word_embeddings.weight[: word.shape[0]])


def test_bert_teacher_init_falls_back_to_random_when_widths_differ(
    private_cache: TransferCache, caplog: pytest.LogCaptureFixture
) -> None:
    student = build_student("bert", init="teacher", hidden_size=48, num_layers=1, **{**FAST, "epochs": 0})
    with caplog.at_level("WARNING", logger="students.bert"):
        student.fit(private_cache)
    assert "random init" in caplog.text
    assert student.arch["bert"]["hidden_size"] == 48 and student.arch["teacher_layers"] is None


def test_bert_layer_map_indices() -> None:
    from students.bert import teacher_layer_indices

    assert teacher_layer_indices("uniform", 4, 12) == [2, 5, 8, 11]
    assert teacher_layer_indices("every_other", 6, 12) == [1, 3, 5, 7, 9, 11]
    assert teacher_layer_indices("first", 2, 12) == [0, 1]
    assert teacher_layer_indices("last", 2, 12) == [10, 11]


# -- layer matching -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_layer_matching_is_zero_only_on_the_mapped_teacher_states(kind: str) -> None:
    from students.layer_matching import LayerMatchingLoss, uniform_layer_map
    from students.objectives import StudentOutput

    mapping = uniform_layer_map(2, 4)
    assert mapping == [(0, 0), (1, 2), (2, 4)]
    torch.manual_seed(0)
    teacher = torch.randn(5, 5, 8)  # [B, L_t + 1, H]
    layers = [teacher[:, t].clone() for _, t in mapping]  # student layer s holds teacher layer map(s)
    loss_fn = LayerMatchingLoss(mapping, [8, 8, 8], 8, weight=1.0, kind=kind)
    out = StudentOutput(logits=torch.zeros(5, 2), sentence=layers[-1], layers=layers)
    loss, terms = loss_fn(out, {"teacher_activations": teacher})
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and "layers" in terms
    shuffled = StudentOutput(logits=torch.zeros(5, 2), sentence=layers[-1], layers=[teacher[:, 1]] * 3)
    assert float(loss_fn(shuffled, {"teacher_activations": teacher})[0]) > 1e-3


def test_layer_matching_projects_other_widths() -> None:
    from students.layer_matching import LayerMatchingLoss, uniform_layer_map
    from students.objectives import StudentOutput

    loss_fn = LayerMatchingLoss(uniform_layer_map(1, 2), [4, 4], 8)
    out = StudentOutput(torch.zeros(3, 2), torch.zeros(3, 4), [torch.randn(3, 4, requires_grad=True)] * 2)
    loss, _ = loss_fn(out, {"teacher_activations": torch.randn(3, 3, 8)})
    loss.backward()
    assert all(isinstance(p, torch.nn.Linear) for p in loss_fn.projections)


# -- teacher-assistant chain ----------------------------------------------------------------------


def test_chain_second_link_learns_from_the_assistant(fitted_chain: dict[str, Any], private_cache) -> None:
    chain, received = fitted_chain["chain"], fitted_chain["received"]
    first, second = received["first"], received["second"]
    assert first.key == private_cache.key  # the first link learns from the teacher's cache
    assistant = chain.links[0]
    assert second.labeler_fingerprint == assistant.fingerprint() != private_cache.labeler_fingerprint
    assert second.path.parent == private_cache.path.parent  # beside the teacher's cache
    assert second.texts == private_cache.texts and second.dev_texts == private_cache.dev_texts
    # the second link's targets are the assistant's logits (stored as float16), not the teacher's
    expected = assistant.predict_logits(second.texts)
    assert np.allclose(np.asarray(second.logits, dtype=np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.allclose(np.asarray(second.logits), np.asarray(private_cache.logits), atol=1e-2)
    assert np.allclose(np.asarray(second.dev_logits, dtype=np.float32), assistant.predict_logits(second.dev_texts),
                       rtol=2e-3, atol=2e-3)  # fmt: skip
    assert second.activations is not None and second.activations.shape == (len(second), 1, 32)  # BiLSTM 2x16
    assert (second.tokenizer_dir / "tokenizer_config.json").is_file()  # the teacher's tokenizer passed on
    assert chain.cache_keys == [private_cache.key, second.key]


def test_chain_returns_one_record_per_link(fitted_chain: dict[str, Any], private_cache) -> None:
    """The chain reports its links as records; studies/ logs them (students never talk to MLflow)."""
    chain = fitted_chain["chain"]
    records = chain.fit_records()
    assert [r.tags["chain_link"] for r in records] == ["0", "1"]
    assert [r.tags["link_student"] for r in records] == ["bilstm", "cnn"]
    assert [r.tags["cache_key"] for r in records] == chain.cache_keys
    assert [r.tags["parent_cache_key"] for r in records] == ["", private_cache.key]
    assert all("dev_score" in r.metrics for r in records) and records[0].tags["chain"] == "teacher -> bilstm -> cnn"
    assert records[0].curves["epoch_train_loss"][0][0] == 1
    import students.chain

    assert "mlflow" not in Path(students.chain.__file__).read_text()


def test_chain_hyper_parameters_reach_their_link(fitted_chain: dict[str, Any]) -> None:
    chain = fitted_chain["chain"]
    assert chain.links[0].hparams["hidden_size"] == 16 and chain.links[1].hparams["n_filters"] == 8
    assert all(link.hparams["epochs"] == 1 for link in chain.links)  # shared keys reach every link


def test_student_configs_compose() -> None:
    from studies.config import compose

    cfg = compose(["student=chain"])
    assert cfg.student.name == "chain" and list(cfg.student.links) == ["bert", "bilstm"]
    for name in ("cnn", "bert"):
        assert compose([f"student={name}"]).student.name == name
