"""Teacher-assistant chains (Mirzadeh et al. 2019, "Improved Knowledge Distillation via Teacher
Assistant"): teacher → assistant(s) → student, each link distilling from the one before.

``student=chain student.links=[bert,bilstm]``: the first link learns from the teacher's cache;
once trained it labels the same transfer set (train and dev texts), which becomes a new cache of
the same format, keyed by that link's fingerprint, next to the teacher's; the next link learns
from it, and so on. Any registered student type can be a link. The deployed model is the last
link: it predicts, and its parameters are the ones counted.

Hyper-parameters: unprefixed keys (``epochs``, ``seed``, ...) apply to every link;
``link0.hidden_size`` (or a nested ``link0: {hidden_size: ...}``) to one link only. The search
space is each link's own, with parameter names prefixed ``link0.``, ``link1.``, ...
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from students.base import DevSet, FitRecord, ParamCount, Reporter, Student
from students.labeler import StudentLabeler
from students.registry import build_student, get_student_class, register
from students.search_space import ConstrainedTrial

if TYPE_CHECKING:
    from transfer.cache import TransferCache, TransferSet

LINK_CHOICES = ["bert,bilstm", "bert,cnn", "bilstm,cnn"]  # searched only when links are not fixed
LINK_STEP_OFFSET = 1000  # link i reports pruning steps i*1000 + epoch, so links never share a step


def parse_links(value: str | Sequence[str]) -> list[str]:
    """["bert", "bilstm"] from "bert,bilstm" or a list (configs and Optuna give either)."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [n for n in names if n]
    if not names:
        raise ValueError("a chain needs at least one link (e.g. links=[bert,bilstm])")
    return names


def _link_index(key: str) -> tuple[int, str] | None:
    """(i, rest) for "link<i>.<rest>" or "link<i>"; None for a shared key."""
    head, _, rest = key.partition(".")
    if head.startswith("link") and head[4:].isdigit():
        return int(head[4:]), rest
    return None


def split_hparams(hparams: dict[str, Any], n_links: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(shared, per-link) hyper-parameters; per-link keys win over shared ones, nested over flat."""
    shared: dict[str, Any] = {}
    flat: list[dict[str, Any]] = [{} for _ in range(n_links)]
    nested: list[dict[str, Any]] = [{} for _ in range(n_links)]
    for key, value in hparams.items():
        if key == "links":
            continue
        found = _link_index(key)
        if found is None:
            shared[key] = value
        elif found[0] >= n_links:
            raise ValueError(f"hyper-parameter {key!r} names link {found[0]}, but the chain has {n_links} links")
        elif found[1]:
            flat[found[0]][found[1]] = value
        elif isinstance(value, dict):
            nested[found[0]] |= value
        else:
            raise ValueError(f"hyper-parameter {key!r} must be a mapping of that link's hyper-parameters")
    return shared, [{**f, **n} for f, n in zip(flat, nested, strict=True)]


def transfer_set_of(cache: TransferCache) -> TransferSet:
    """The transfer set a cache was built from (same texts, labels and description, so the same data key)."""
    from transfer.cache import TransferSet

    return TransferSet(
        texts=list(cache.texts),
        labels=np.asarray(cache.labels, dtype=np.int64),
        dev_texts=list(cache.dev_texts),
        dev_labels=np.asarray(cache.dev_labels, dtype=np.int64),
        label_names=list(cache.label_names),
        task=str(cache.manifest.get("task", "")),
        description=dict(cache.manifest.get("transfer") or {}),
        test_texts=list(cache.test_texts),
        test_labels=np.asarray(cache.test_labels if cache.test_labels is not None else [], dtype=np.int64),
    )


def _offset_report(report: Reporter | None, offset: int) -> Reporter | None:
    if report is None:
        return None

    def shifted(step: int, score: float) -> None:
        report(offset + step, score)

    return shifted


@register("chain")
class ChainStudent(Student):
    """Teacher-assistant chain; ``links`` lists the student types, first (closest to the teacher) to last."""

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.hparams["links"] = parse_links(self.hparams["links"])
        self.links: list[Student] = []
        self.cache_keys: list[str] = []  # the cache each link learned from
        self.dev_scores: list[float] = []
        self._records: list[FitRecord] = []

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {"links": ["bert", "bilstm"]}

    @classmethod
    def searched_defaults(cls, fixed: Mapping[str, Any]) -> dict[str, Any]:
        """Each link type's defaults as ``link<i>.<name>`` (the search space's names), for the links in use."""
        links = parse_links(fixed.get("links") or cls.default_hparams()["links"])
        values: dict[str, Any] = {"links": ",".join(links)}
        for i, name in enumerate(links):
            values |= {f"link{i}.{k}": v for k, v in get_student_class(name).searched_defaults({}).items()}
        return values

    @classmethod
    def unknown_hparams(cls, names: Sequence[str]) -> list[str]:
        """A shared name must be known by some link type, ``link<i>.<name>`` by link i's type."""
        types = [get_student_class(n) for n in sorted({n for c in LINK_CHOICES for n in parse_links(c)})]
        unknown = []
        for key in names:
            found = _link_index(key)
            if key == "links" or (found is not None and not found[1]):
                continue  # the link list, or a nested "link0: {...}" mapping (checked when split)
            name = found[1] if found is not None else key
            if not any(name in t.hparam_names() for t in types):
                unknown.append(key)
        return sorted(unknown)

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        # Shared keys and nested "link0: {...}" values fixed by the study are resolved per link here,
        # so they are not sampled; fixed "link0.<name>" values are resolved by the study's trial.
        fixed = dict(getattr(trial, "fixed", None) or {})
        links = parse_links(trial.suggest_categorical("links", LINK_CHOICES))
        shared, per_link = split_hparams(fixed, len(links))
        space: dict[str, Any] = {"links": links}
        for i, name in enumerate(links):
            proxy = ConstrainedTrial(trial, {**shared, **per_link[i]}, prefix=f"link{i}.")
            space |= {f"link{i}.{k}": v for k, v in get_student_class(name).search_space(proxy, extras).items()}
        return space

    def link_hparams(self, i: int) -> dict[str, Any]:
        """Link ``i``'s hyper-parameters: shared keys, then its own."""
        shared, per_link = split_hparams(self.hparams, len(self.hparams["links"]))
        return {**shared, **per_link[i]}

    @property
    def description(self) -> str:
        return " -> ".join(["teacher", *self.hparams["links"]])

    # -- learning ----------------------------------------------------------------------------
    def fit(self, cache: TransferCache, dev: DevSet | None = None, report: Reporter | None = None) -> ChainStudent:
        from transfer.cache import get_or_build_cache

        names = self.hparams["links"]
        self.links, self.cache_keys, self.dev_scores, self._records = [], [], [], []
        current, parent_key = cache, ""
        for i, name in enumerate(names):
            link = build_student(name, **self.link_hparams(i))
            link.with_runtime(self.runtime.device, self.runtime.progress)
            link.fit(current, dev, _offset_report(report, i * LINK_STEP_OFFSET))
            score = self._dev_score(link, current, dev)
            self.links.append(link)
            self.cache_keys.append(current.key)
            self.dev_scores.append(score)
            produced = None
            if i + 1 < len(names):
                # The assistant labels the same transfer set; its cache sits beside the teacher's.
                labeler = StudentLabeler(link, assets_from=current.assets)
                # the next link matches derivatives: this assistant computes its own for it
                wants = float(self.link_hparams(i + 1).get("derivative_weight") or 0.0) > 0
                produced = get_or_build_cache(
                    labeler,
                    transfer_set_of(current),
                    current.path.parent,
                    derivatives=wants,
                    progress=self.runtime.progress,
                )
            self._records.append(self._link_record(i, link, current, parent_key, score, produced))
            if produced is not None:
                current, parent_key = produced, current.key
        return self

    def with_runtime(self, device: str | None = None, progress: bool = False) -> ChainStudent:
        super().with_runtime(device, progress)
        for link in self.links:  # loaded links follow the chain's runtime
            link.with_runtime(device, progress)
        return self

    def fit_records(self) -> list[FitRecord]:
        """One record per link (its cache, hyper-parameters, dev score, curves): studies/ logs them."""
        return list(self._records)

    @staticmethod
    def _dev_score(link: Student, cache: TransferCache, dev: DevSet | None) -> float:
        """The link's dev score: the task metric when given, else accuracy on the cache's labelled dev texts."""
        if dev is not None:
            return dev.evaluate(link.predict_logits(dev.split.texts))
        labels = np.asarray(cache.dev_labels)
        pred = link.predict(cache.dev_texts)
        known = labels >= 0
        return float((pred[known] == labels[known]).mean()) if known.any() else float("nan")

    def _link_record(
        self,
        i: int,
        link: Student,
        cache: TransferCache,
        parent_key: str,
        score: float,
        produced: TransferCache | None,
    ) -> FitRecord:
        """What link ``i`` learned from and how it did, so the whole chain can be tracked."""
        tags = {
            "role": "chain_link",
            "chain": self.description,
            "chain_link": str(i),
            "link_student": link.name,
            "cache_key": cache.key,
            "parent_cache_key": parent_key,
            "labeler_fingerprint": cache.labeler_fingerprint,
        }
        if produced is not None:
            tags["labels_cache_key"] = produced.key
        count = link.n_params()
        curves: dict[str, list[tuple[int, float]]] = {}
        history = getattr(link, "history", None)
        for record in getattr(history, "epochs", None) or []:
            for key in ("train_loss", "dev_score"):
                if key in record:
                    curves.setdefault(f"epoch_{key}", []).append((int(record["epoch"]), float(record[key])))
        return FitRecord(
            name=f"chain-link{i}-{link.name}",
            tags=tags,
            params=dict(link.hparams),
            metrics={"dev_score": score, "params_total": count.total, "params_non_embedding": count.non_embedding},
            curves=curves,
        )

    def fit_metrics(self) -> dict[str, float]:
        return {f"link{i}_dev_score": s for i, s in enumerate(self.dev_scores)}

    # -- inference ---------------------------------------------------------------------------
    def _last(self) -> Student:
        if not self.links:
            raise RuntimeError("fit or load the chain first")
        return self.links[-1]

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._last().predict_logits(texts)

    def serving_predictor(self) -> tuple[str, Callable[[Sequence[str]], np.ndarray]]:
        """The last link's: it is the model that gets deployed."""
        return self._last().serving_predictor()

    def n_params(self) -> ParamCount:
        """The last link's: it is the model that gets deployed."""
        return self._last().n_params()

    # -- persistence -------------------------------------------------------------------------
    def _save_state(self, path: Path) -> None:
        for i, link in enumerate(self.links):
            link.save(path / f"link{i}")
        meta = {"links": self.hparams["links"], "cache_keys": self.cache_keys, "dev_scores": self.dev_scores}
        (path / "chain.json").write_text(json.dumps(meta, indent=2))

    def _load_state(self, path: Path) -> None:
        meta = json.loads((path / "chain.json").read_text())
        self.links = [Student.load(path / f"link{i}") for i in range(len(self.hparams["links"]))]
        self.cache_keys = list(meta.get("cache_keys", []))
        self.dev_scores = list(meta.get("dev_scores", []))
