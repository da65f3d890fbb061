"""Fine-tune a teacher once per (base model, task data, hyper-parameters) and keep it on disk.

The result lives under ``<cache>/teachers/<key>/`` and is written atomically (``<key>.partial``
then rename). Training checkpoints every few hundred steps into the partial directory, so an
interrupted fine-tune resumes instead of starting over. A file lock lets concurrent workers
share one fine-tune.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from teachers.model import TRAINING_RECORD, Teacher, quiet_transformers
from teachers.sources import BaseModel, resolve_base, tiny_identity
from teachers.tiny import write_tiny_bert
from transfer.batching import bucketed_batches, pad_batch
from transfer.errors import KDError
from transfer.fingerprint import hash_json
from transfer.interrupts import held_interrupts
from transfer.settings import FromMapping
from transfer.tasks import Task


@dataclass
class FineTuneConfig(FromMapping):
    epochs: float = 1.0  # fractions allowed: 0.5 = half an epoch
    lr: float = 1e-4
    batch_size: int = 64
    max_length: int = 64
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    freeze_embeddings: bool = True  # the word-embedding table is half of MiniLM; freezing halves step time
    seed: int = 0  # the teacher's own seed (teacher.seed), independent of the students' seed=
    select_epoch: bool = True  # score dev after every epoch and keep the best epoch's weights (a choice on dev)
    checkpoint_every: int = 300  # steps
    tiny: dict[str, int] = field(default_factory=dict)  # sizes for teacher.name=tiny

    def key_fields(self) -> dict[str, Any]:
        """What changes the fine-tuned weights (checkpointing frequency does not).

        Whole epochs are keyed as integers, so ``teacher.epochs=3`` and ``teacher.epochs=3.0`` (one
        schedule, two spellings) find the same cached teacher instead of fine-tuning it twice.
        """
        fields_ = asdict(self)
        fields_.pop("checkpoint_every")
        if float(self.epochs).is_integer():
            fields_["epochs"] = int(self.epochs)
        return fields_


def teacher_key(base: BaseModel, task: Task, config: FineTuneConfig) -> str:
    return hash_json({"base": base.identity, "task": task.fingerprint(), "finetune": config.key_fields()})


def _resolve(name: str, task: Task, config: FineTuneConfig, work: Path) -> BaseModel:
    if name != "tiny":
        return resolve_base(name)
    identity = tiny_identity(config.tiny, task.train.fingerprint())
    location = work / "tiny-base"
    return BaseModel(str(location), identity)


def _load_base(base: BaseModel, num_labels: int) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(base.location)
        model = AutoModelForSequenceClassification.from_pretrained(
            base.location, num_labels=num_labels, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise KDError(
            f"could not load teacher.name={base.location!r}: {first_line} "
            "(use 'minilm' for the packaged offline default, a local model directory, or a reachable hub id)"
        ) from err
    return model, tokenizer


def _evaluate(model: Any, tokenizer: Any, task: Task, config: FineTuneConfig, device: torch.device) -> dict[str, float]:
    """Every task metric on the dev split (the split every choice is made on)."""
    model.eval()
    enc = tokenizer(task.dev.texts, truncation=True, max_length=config.max_length)
    ids = [np.asarray(x) for x in enc["input_ids"]]
    preds = np.zeros(len(ids), dtype=np.int64)
    order = np.argsort([len(x) for x in ids])
    with torch.no_grad():
        for start in range(0, len(ids), 256):
            idx = order[start : start + 256]
            input_ids, mask = pad_batch([ids[i] for i in idx], tokenizer.pad_token_id or 0, device)
            preds[idx] = model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1).cpu().numpy()
    model.train()
    return task.score(task.dev.labels, preds)


def _epoch_ends(steps_per_epoch: int, total: int) -> list[int]:
    """Steps after which dev is scored: every whole epoch, and the last step (fractional epochs)."""
    ends = list(range(steps_per_epoch, total + 1, steps_per_epoch))
    return ends if ends and ends[-1] == total else [*ends, total]


def _train(
    model: Any,
    tokenizer: Any,
    task: Task,
    config: FineTuneConfig,
    work: Path,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """The fine-tuning loop, resumable from ``work/checkpoint.pt``.

    It checkpoints every ``checkpoint_every`` steps, at each scored epoch end, and when interrupted,
    so a stopped fine-tune loses no finished step. The batch order is fixed by the seed, so a
    resumed run sees the same batches; dropout's random draws after a resume differ.
    """
    torch.manual_seed(config.seed)
    model.to(device).train()
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    enc = tokenizer(task.train.texts, truncation=True, max_length=config.max_length)
    ids = [np.asarray(x) for x in enc["input_ids"]]
    lengths = np.array([len(x) for x in ids])
    labels = torch.as_tensor(task.train.labels, dtype=torch.long)
    steps_per_epoch = math.ceil(len(ids) / config.batch_size)
    total = max(1, int(steps_per_epoch * config.epochs))
    warmup = int(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
    )
    step = 0
    checkpoint = work / "checkpoint.pt"
    best_file = work / "best_epoch.pt"  # weights of the best epoch on dev so far (select_epoch)
    epochs_scored: list[dict[str, Any]] = []
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
        epochs_scored = list(state.get("epochs_scored", []))
    ends = set(_epoch_ends(steps_per_epoch, total)) if config.select_epoch else set()

    def save_checkpoint(at: int) -> None:
        state = {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": at,
            "epochs_scored": epochs_scored,
        }
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, checkpoint)

    def score_epoch(at: int) -> None:
        """Dev score after the epoch ending at step ``at``; the best epoch's weights go to ``best_file``."""
        score = _evaluate(model, tokenizer, task, config, device)[task.metric]
        if score > max((e["dev_score"] for e in epochs_scored), default=-math.inf):
            tmp = best_file.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, best_file)
        # listed only once its weights are saved: a scored epoch always has them in best_file
        epochs_scored.append({"step": at, "epoch": at / steps_per_epoch, "dev_score": score})
        tqdm.write(f"teacher after epoch {at / steps_per_epoch:.2f}: dev {task.metric}={score:.4f}")

    rng = np.random.default_rng(config.seed)
    epoch_batches: list[np.ndarray] = []
    for _ in range(math.ceil(config.epochs)):
        epoch_batches.extend(bucketed_batches(lengths, config.batch_size, rng))
    epoch_batches = epoch_batches[:total]
    started = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="fine-tuning teacher", unit="step", disable=not progress)
    done = step  # steps whose update is complete: what an interruption's checkpoint holds
    try:
        for i in range(step, total):
            idx = epoch_batches[i]
            input_ids, mask = pad_batch([ids[j] for j in idx], tokenizer.pad_token_id or 0, device)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels[idx].to(device)).loss
            if not torch.isfinite(loss):
                raise KDError(f"teacher fine-tuning diverged (loss {float(loss)} at step {i}); lower teacher.lr")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            with held_interrupts():  # the update and the count of done steps move together
                optimiser.step()
                scheduler.step()
                done = i + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if i + 1 in ends:
                score_epoch(i + 1)
                if i + 1 < total:
                    save_checkpoint(i + 1)
            elif (i + 1) % config.checkpoint_every == 0 and i + 1 < total:
                save_checkpoint(i + 1)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM via studies.cli: keep the steps since the last checkpoint
        scored = {e["step"] for e in epochs_scored}
        if done > step and (done not in ends or done in scored):  # an epoch end is kept once it is scored
            save_checkpoint(done)
            bar.write(f"teacher fine-tuning interrupted: checkpoint at step {done} of {total}; rerun to resume")
        raise
    bar.close()
    chosen = None
    if epochs_scored and best_file.exists():
        chosen = max(epochs_scored, key=lambda e: e["dev_score"])
        model.load_state_dict(torch.load(best_file, map_location="cpu"))
        best_file.unlink()
    return {
        "steps": total,
        "train_seconds": time.perf_counter() - started,
        "resumed_from_step": step,
        "epochs_scored": epochs_scored,
        "chosen_epoch": chosen["epoch"] if chosen else None,
    }


def planned_teacher_key(name: str, task: Task, config: FineTuneConfig, root: str | Path) -> str:
    """The key the fine-tuned teacher for (``name``, task, config) has or will have; computes nothing heavy."""
    return teacher_key(_resolve(name, task, config, Path(root) / "teachers" / "probe"), task, config)


def get_teacher(
    name: str,
    task: Task,
    config: FineTuneConfig,
    root: str | Path,
    device: str | None = None,
    progress: bool = True,
) -> Teacher:
    """The fine-tuned teacher for (``name``, task, config): loaded if cached, else fine-tuned now.

    ``progress=False`` (a background run's log) drops the step bar; each epoch's dev score still prints.
    """
    root = Path(root) / "teachers"
    root.mkdir(parents=True, exist_ok=True)
    probe = root / "probe"  # only a location for the tiny base; never written for other teachers
    base = _resolve(name, task, config, probe)
    key = teacher_key(base, task, config)
    final = root / key
    if (final / TRAINING_RECORD).is_file():
        return Teacher(final, max_length=config.max_length, device=device)
    with FileLock(str(root / f"{key}.lock")):
        if not (final / TRAINING_RECORD).is_file():
            work = root / f"{key}.partial"
            work.mkdir(exist_ok=True)
            if name == "tiny":
                base = BaseModel(
                    str(write_tiny_bert(work / "tiny-base", task.train.texts, task.num_labels, **config.tiny)),
                    base.identity,
                )
            model, tokenizer = _load_base(base, task.num_labels)
            dev_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            stats = _train(model, tokenizer, task, config, work, dev_device, progress)
            scores = _evaluate(model, tokenizer, task, config, dev_device)
            model.config.id2label = dict(enumerate(task.labels))
            model.config.label2id = {label: i for i, label in enumerate(task.labels)}
            model.save_pretrained(str(work))
            tokenizer.save_pretrained(str(work))
            for leftover in ("checkpoint.pt", "tiny-base"):
                target = work / leftover
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            record = {
                "key": key,
                "base": base.identity,
                "name": name,
                "task": task.name,
                "metric": task.metric,
                "finetune": config.key_fields(),
                "dev_scores": scores,
                **stats,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (work / TRAINING_RECORD).write_text(json.dumps(record, indent=2))
            if final.exists():
                shutil.rmtree(final)
            os.replace(work, final)
    return Teacher(final, max_length=config.max_length, device=device)
