"""Teachers: the packaged MiniLM loads offline, Teacher labels like the cache expects, fine-tunes are cached."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import teachers.finetune as finetune
from teachers.finetune import FineTuneConfig, get_teacher, teacher_key
from teachers.model import TRAINING_RECORD, Teacher
from teachers.sources import BaseModel, resolve_base, tiny_identity
from transfer.errors import KDError
from transfer.interrupts import held_interrupts

SENTENCES = ["a wonderful film", "dull", "the plot was awful and the acting was clumsy", "fine"]


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged MiniLM with a fresh 2-label head, saved like a fine-tuned teacher directory."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        location = resolve_base("minilm").location
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=2)
        tokenizer = AutoTokenizer.from_pretrained(location)
    out = tmp_path_factory.mktemp("minilm_teacher")
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_packaged_minilm_loads_offline(offline: None) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = resolve_base("minilm")
    assert Path(base.location).is_dir() and base.identity.startswith("minilm:")
    assert resolve_base("minilm") == base  # the identity is a stable content hash
    model = AutoModelForSequenceClassification.from_pretrained(base.location, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(base.location)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    assert tuple(out.logits.shape) == (len(SENTENCES), 2)
    assert torch.isfinite(out.logits).all()
    assert len(out.hidden_states) == 7
    assert all(h.shape[0] == len(SENTENCES) and h.shape[-1] == 384 for h in out.hidden_states)


def test_teacher_labels_like_a_labeler(minilm_dir: Path, tmp_path: Path, offline: None) -> None:
    teacher = Teacher(minilm_dir, max_length=32, device="cpu")
    assert teacher.num_labels == 2
    logits, acts = teacher.label_batch(SENTENCES)
    assert logits.shape == (len(SENTENCES), 2) and logits.dtype == np.float32
    assert acts.shape == (len(SENTENCES), 7, 384) and np.isfinite(acts).all()

    # padding must not matter: a sentence labelled alone gives what it gave inside a padded batch
    alone_logits, alone_acts = teacher.label_batch(SENTENCES[1:2])
    np.testing.assert_allclose(alone_logits[0], logits[1], atol=1e-4)
    np.testing.assert_allclose(alone_acts[0], acts[1], atol=1e-4)
    np.testing.assert_allclose(teacher.predict_logits(SENTENCES), logits, atol=1e-4)

    lengths = teacher.text_lengths(SENTENCES)
    assert lengths.shape == (len(SENTENCES),) and lengths[2] > lengths[1] >= 3  # [CLS] dull [SEP]
    assert teacher.text_lengths(["word " * 100])[0] == 32  # truncated at max_length

    total, non_embedding = teacher.n_params()
    assert 20_000_000 < total < 25_000_000 and 0 < non_embedding < total

    fingerprint = teacher.fingerprint
    assert fingerprint.startswith("teacher-") and fingerprint.endswith("-L32")
    assert Teacher(minilm_dir, max_length=64, device="cpu").fingerprint != fingerprint
    assert Teacher(minilm_dir, max_length=32, device="cpu").fingerprint == fingerprint

    teacher.write_assets(tmp_path / "assets")
    table = np.load(tmp_path / "assets" / "embeddings.npy")
    assert table.dtype == np.float16 and table.shape[1] == 384 and table.shape[0] == len(teacher.tokenizer)
    assert (tmp_path / "assets" / "tokenizer" / "tokenizer_config.json").is_file()


def test_tiny_teacher_is_fine_tuned_once(
    tiny_teacher, tiny_task, tiny_finetune_config: FineTuneConfig, tiny_teacher_root: Path, monkeypatch
) -> None:
    record = json.loads((tiny_teacher.path / TRAINING_RECORD).read_text())
    assert record["name"] == "tiny" and record["task"] == "sst2" and record["steps"] > 0
    assert record["dev_scores"]["accuracy"] >= 0.8, "the tiny data's label should be learnable"
    assert tiny_teacher.path.parent == tiny_teacher_root / "teachers"
    assert not list(tiny_teacher.path.parent.glob("*.partial"))
    assert not (tiny_teacher.path / "checkpoint.pt").exists() and not (tiny_teacher.path / "tiny-base").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher was fine-tuned again")

    monkeypatch.setattr(finetune, "_train", no_training)
    again = get_teacher("tiny", tiny_task, tiny_finetune_config, tiny_teacher_root, device="cpu")
    assert again.path == tiny_teacher.path
    assert again.fingerprint == tiny_teacher.fingerprint
    np.testing.assert_allclose(
        again.predict_logits(tiny_task.dev.texts[:5]), tiny_teacher.predict_logits(tiny_task.dev.texts[:5]), atol=1e-5
    )


def test_teacher_key_tracks_what_changes_the_weights(tiny_task, tiny_finetune_config: FineTuneConfig) -> None:
    base = BaseModel("unused", tiny_identity(tiny_finetune_config.tiny, tiny_task.train.fingerprint()))
    key = teacher_key(base, tiny_task, tiny_finetune_config)
    assert key == teacher_key(base, tiny_task, replace(tiny_finetune_config))
    assert key == teacher_key(base, tiny_task, replace(tiny_finetune_config, checkpoint_every=7))
    assert key != teacher_key(base, tiny_task, replace(tiny_finetune_config, seed=1))
    assert key != teacher_key(base, tiny_task, replace(tiny_finetune_config, epochs=1.0))
    whole = float(int(tiny_finetune_config.epochs) + 1)  # one schedule spelled 2 or 2.0: one teacher
    assert teacher_key(base, tiny_task, replace(tiny_finetune_config, epochs=whole)) == teacher_key(
        base, tiny_task, replace(tiny_finetune_config, epochs=int(whole))
    )
    assert teacher_key(base, tiny_task, replace(tiny_finetune_config, epochs=whole)) != teacher_key(
        base, tiny_task, replace(tiny_finetune_config, epochs=whole + 0.5)
    )
    assert key != teacher_key(BaseModel("unused", "hub:other"), tiny_task, tiny_finetune_config)


def test_unknown_teacher_is_one_clear_error(tiny_task, tmp_path: Path, offline: None) -> None:
    name = "kd-students-tests/no-such-model"
    with pytest.raises(KDError) as info:
        get_teacher(name, tiny_task, FineTuneConfig(), tmp_path, device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert f"teacher.name={name!r}" in message and "minilm" in message
    assert not list((tmp_path / "teachers").glob("*/kd_teacher.json"))


def test_teacher_name_that_is_a_file(tiny_task, tmp_path: Path, offline: None) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"\0")
    with pytest.raises(KDError, match="is a file"):
        get_teacher(str(weights), tiny_task, FineTuneConfig(), tmp_path, device="cpu")


def test_local_directory_teacher_resolves_by_content(minilm_dir: Path) -> None:
    base = resolve_base(str(minilm_dir))
    assert base.location == str(minilm_dir.resolve()) and base.identity.startswith("path:")
    assert resolve_base(str(minilm_dir)).identity == base.identity


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_held_block_lands_after_it(signum: int) -> None:
    steps: list[str] = []
    # as studies.cli sets them; SIGINT too, which is ignored when pytest itself runs in the background
    previous = {s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt), held_interrupts():
            steps.append("update")
            os.kill(os.getpid(), signum)  # arrives halfway through: must not cut the block short
            steps.append("count")
        assert steps == ["update", "count"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_an_interrupted_fine_tune_checkpoints_where_it_stopped_and_resumes_there(
    tiny_task, tiny_finetune_config: FineTuneConfig, tmp_path: Path, monkeypatch
) -> None:
    """Ctrl-C (or SIGTERM, via studies.cli) between checkpoints must not throw away the steps since the last one."""
    config = replace(tiny_finetune_config, checkpoint_every=10_000, select_epoch=False, epochs=2.0)
    real_tqdm = finetune.tqdm

    class StopsAtStep5(real_tqdm):  # the user presses Ctrl-C right after step 5 of the first run
        def update(self, n: int = 1) -> bool | None:
            result = super().update(n)
            if self.n == 5:
                raise KeyboardInterrupt
            return result

    monkeypatch.setattr(finetune, "tqdm", StopsAtStep5)
    with pytest.raises(KeyboardInterrupt):
        get_teacher("tiny", tiny_task, config, tmp_path, device="cpu")
    (partial,) = (tmp_path / "teachers").glob("*.partial")
    assert torch.load(partial / "checkpoint.pt", weights_only=False)["step"] == 5

    monkeypatch.setattr(finetune, "tqdm", real_tqdm)
    teacher = get_teacher("tiny", tiny_task, config, tmp_path, device="cpu")
    record = json.loads((teacher.path / TRAINING_RECORD).read_text())
    assert record["resumed_from_step"] == 5 and record["steps"] > 5


def test_the_kept_teacher_is_its_best_epoch_on_dev(tiny_teacher, tiny_finetune_config: FineTuneConfig) -> None:
    """select_epoch: every epoch is scored on dev and the weights kept are the best one's, not the last one's."""
    record = json.loads((tiny_teacher.path / TRAINING_RECORD).read_text())
    scored = record["epochs_scored"]
    assert len(scored) == tiny_finetune_config.epochs  # the tiny config's epochs, each scored once
    best = max(scored, key=lambda e: e["dev_score"])
    assert record["chosen_epoch"] == best["epoch"]
    assert record["dev_scores"][record["metric"]] == pytest.approx(best["dev_score"], abs=1e-6)


def test_progress_off_quiets_the_fine_tune_and_labelling_bars(
    tiny_task, tiny_finetune_config: FineTuneConfig, tmp_path, capsys
) -> None:
    """A background run's log (``progress=false``) gets each epoch's dev score, not thousands of bar updates."""
    from transfer.cache import get_or_build_cache
    from transfer.transfer_set import make_transfer_set

    teacher = get_teacher("tiny", tiny_task, tiny_finetune_config, tmp_path, device="cpu", progress=False)
    get_or_build_cache(teacher, make_transfer_set(tiny_task), tmp_path / "transfer", progress=False)
    out, err = capsys.readouterr()
    assert "teacher after epoch" in out + err
    assert "fine-tuning teacher" not in out + err and "labelling" not in out + err
