"""Decision-forest students: LightGBM, random/extra-trees forests and one shallow tree.

All three read the same n-gram TF-IDF features (``students.featurizer``) and *regress the
teacher's logits* (never only the hard labels), so they learn the teacher's confidence, not
just its decisions.

Targets (the "outputs" of the trees):

* 2 classes: one output, the teacher's logit margin ``m = z1 - z0``; ``predict_logits``
  returns ``[-m/2, m/2]``. That is exactly the teacher's logit row with its mean removed,
  so argmax and softmax are those of the margin.
* C > 2 classes: C outputs, the teacher's logits centred per example (``z - mean(z)``).
  Centring removes the one degree of freedom softmax ignores (adding a constant to a row),
  so the trees spend no splits on it; argmax and softmax are unchanged.

The argmax of ``predict_logits`` is the prediction. LightGBM fits one booster per output;
scikit-learn trees are natively multi-output (one tree predicts all C outputs).

Parameter count (``n_params``): the learned parameters of a tree are its split thresholds
(one per internal node) plus its leaf values (one per output per leaf); for a single-output
tree that is its number of nodes. ``total`` adds the featuriser's fitted IDF weights (one per
n-gram in the vocabulary); ``non_embedding`` leaves them out, as the TF-IDF vocabulary plays
the role of an embedding table (see ``ParamCount``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import joblib
import numpy as np
import scipy.sparse as sp

from students.base import DevSet, ParamCount, Reporter, Student
from students.featurizer import FeaturizerConfig, NgramFeaturizer
from students.registry import register

if TYPE_CHECKING:
    from transfer.cache import TransferCache

STATE_FILE = "forest.joblib"
# Below this many texts, predict on one thread: thread start-up costs more than it saves
# (LightGBM on a busy 2-core machine: ~16 ms per sentence with 2 threads, ~1 ms with one).
SMALL_BATCH = 1000


class ForestStudent(Student):
    """What the tree students share: featurise, build regression targets from logits, save/load, explain."""

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.featurizer: NgramFeaturizer | None = None
        self.label_names: list[str] = []
        self.models: list[Any] = []

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {**FeaturizerConfig.defaults(), "seed": 0, "n_jobs": -1}

    @staticmethod
    def suggest_features(trial: Any, word: Sequence[int], char: Sequence[int] | None) -> dict[str, Any]:
        """The featuriser's part of a search space (vocabulary sizes drive both accuracy and speed).

        ``char=None`` leaves character n-grams out of the search (they stay at the default).
        """
        space = {
            "word_max_features": trial.suggest_categorical("word_max_features", list(word)),
            "word_ngram_max": trial.suggest_int("word_ngram_max", 1, 2),
        }
        if char is not None:
            space["char_max_features"] = trial.suggest_categorical("char_max_features", list(char))
        return space

    # -- targets ----------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def output_names(self) -> list[str]:
        """What each regression output means (used to title explanations)."""
        if self.num_labels == 2:
            return [f"margin {self.label_names[1]} − {self.label_names[0]}"]
        return [f"centred logit of {name}" for name in self.label_names]

    def targets(self, logits: np.ndarray) -> np.ndarray:
        """Teacher logits [N, C] → regression targets [N, K] (K = 1 for 2 classes, else C)."""
        z = np.asarray(logits, dtype=np.float64)
        if z.shape[1] == 2:
            return (z[:, 1] - z[:, 0])[:, None]
        return z - z.mean(axis=1, keepdims=True)

    def to_logits(self, outputs: np.ndarray) -> np.ndarray:
        """Regression outputs [n, K] → logits [n, C] float32 whose argmax is the prediction."""
        out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
        if self.num_labels == 2:
            return np.concatenate([-out / 2, out / 2], axis=1).astype(np.float32)
        return out.astype(np.float32)

    # -- Student interface -------------------------------------------------------------------
    def fit(self, cache: TransferCache, dev: DevSet | None = None, report: Reporter | None = None) -> ForestStudent:
        self.label_names = list(cache.label_names)
        self.featurizer = NgramFeaturizer(FeaturizerConfig.from_mapping(self.hparams))
        x = self.featurizer.fit_transform(cache.texts)
        y = self.targets(np.asarray(cache.logits, dtype=np.float32))
        dev_x = self.featurizer.transform(dev.split.texts) if dev is not None else None
        self._fit_models(x, y, dev, dev_x, report)
        return self

    @abstractmethod
    def _fit_models(
        self, x: sp.csr_matrix, y: np.ndarray, dev: DevSet | None, dev_x: sp.csr_matrix | None, report: Reporter | None
    ) -> None:
        """Fit ``self.models`` on features ``x`` and targets ``y`` [N, K]; report dev scores."""

    @abstractmethod
    def predict_outputs(self, x: sp.csr_matrix) -> np.ndarray:
        """Regression outputs [n, K] for featurised texts."""

    @abstractmethod
    def contributions(self, x: sp.csr_matrix) -> tuple[list[sp.csr_matrix], np.ndarray]:
        """Per-feature additive contributions: K sparse [n, F] matrices and the bias [n, K].

        For every text and output, ``bias + row sum of contributions == predict_outputs``.
        """

    @abstractmethod
    def importances(self) -> np.ndarray:
        """The model's own feature importances, [K, F] (per output) or [1, F] (shared by all)."""

    @abstractmethod
    def _tree_params(self) -> int:
        """Split thresholds plus leaf values over every tree used at prediction."""

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        assert self.featurizer is not None, "fit or load the student first"
        return self.featurizer.transform(texts)

    def predict_logits(self, texts: Sequence[str]) -> np.ndarray:
        return self.to_logits(self.predict_outputs(self.features(texts)))

    def n_params(self) -> ParamCount:
        assert self.featurizer is not None, "fit or load the student first"
        trees = self._tree_params()
        return ParamCount(total=trees + self.featurizer.n_features, non_embedding=trees)

    def artifacts(self, dev_texts: Sequence[str]) -> dict[str, str]:
        """Explanation files (name → text) that a study logs next to the trial's metrics."""
        from students.explain import explain

        return explain(self, dev_texts)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _save_state(self, path: Path) -> None:
        assert self.featurizer is not None, "fit the student first"
        state = {"featurizer": self.featurizer, "label_names": self.label_names, "models": self.models}
        joblib.dump({**state, **self._extra_state()}, path / STATE_FILE)

    def _load_state(self, path: Path) -> None:
        state = joblib.load(path / STATE_FILE)
        self.featurizer = state.pop("featurizer")
        self.label_names = state.pop("label_names")
        self.models = state.pop("models")
        for key, value in state.items():
            setattr(self, key, value)


# -- LightGBM --------------------------------------------------------------------------------


@register("lgbm")
class LGBMStudent(ForestStudent):
    """Gradient-boosted trees (LightGBM ``LGBMRegressor``), one booster per output.

    Word n-grams only by default: character n-grams are dense (~100 non-zeros per sentence
    against ~10 for words) and LightGBM's cost per round grows with the non-zeros (measured on
    SST-2, 67k sentences: ~0.2 s per round with 5k words, ~1 s with 2k character n-grams added).
    Set ``char_max_features`` to use them anyway.

    Every ``eval_every`` rounds the dev score of all boosters truncated to that round is
    reported (the first K-1 boosters are trained first, so reports happen while the last one
    trains: for 2 classes, one booster, pruning stops training early; so does
    ``early_stop_rounds`` rounds without a better dev score). Prediction uses the best reported
    round, as neural students keep their best-on-dev weights.
    """

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.num_iteration: int | None = None  # rounds used at prediction (None = all)

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "char_max_features": 0,
            "n_estimators": 200,
            "learning_rate": 0.1,
            "num_leaves": 31,
            "max_depth": -1,
            "min_child_samples": 20,
            "subsample": 1.0,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
            "max_bin": 31,  # TF-IDF weights need few bins; fewer bins = smaller histograms
            "eval_every": 50,
            "early_stop_rounds": 200,  # stop once dev has not improved for this many rounds (0: never)
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        return {
            **cls.suggest_features(trial, word=[2000, 5000, 10000, 20000], char=None),
            # up to 1000: on SST-2's 60k phrases a probe kept improving past 300 rounds; the round
            # kept is the best on dev, and early stopping ends the rest
            "n_estimators": trial.suggest_int("n_estimators", 100, 1000, step=100),
            "learning_rate": trial.suggest_float("learning_rate", 0.05, 0.3, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 15, 63, log=True),
            "min_child_samples": trial.suggest_int("min_child_samples", 5, 50, log=True),
            "subsample": trial.suggest_float("subsample", 0.5, 1.0),
            "colsample_bytree": trial.suggest_float("colsample_bytree", 0.2, 0.8),
            "reg_lambda": trial.suggest_float("reg_lambda", 1e-3, 10.0, log=True),
        }

    def _regressor(self) -> Any:
        from lightgbm import LGBMRegressor

        h = self.hparams
        subsample = float(h["subsample"])
        return LGBMRegressor(
            n_estimators=int(h["n_estimators"]),
            learning_rate=float(h["learning_rate"]),
            num_leaves=int(h["num_leaves"]),
            max_depth=int(h["max_depth"]),
            min_child_samples=int(h["min_child_samples"]),
            subsample=subsample,
            subsample_freq=1 if subsample < 1.0 else 0,
            colsample_bytree=float(h["colsample_bytree"]),
            reg_lambda=float(h["reg_lambda"]),
            max_bin=int(h["max_bin"]),
            force_col_wise=True,  # wide sparse TF-IDF: skip LightGBM's row/col-wise timing test
            random_state=int(h["seed"]),
            n_jobs=int(h["n_jobs"]),
            verbose=-1,
        )

    def _fit_models(
        self, x: sp.csr_matrix, y: np.ndarray, dev: DevSet | None, dev_x: sp.csr_matrix | None, report: Reporter | None
    ) -> None:
        from lightgbm.callback import EarlyStopException

        n_rounds, every = int(self.hparams["n_estimators"]), max(1, int(self.hparams["eval_every"]))
        patience = int(self.hparams.get("early_stop_rounds") or 0)
        self.models, self.num_iteration = [], None
        best = (-np.inf, n_rounds)
        for k in range(y.shape[1]):
            callbacks = []
            if k == y.shape[1] - 1 and dev is not None and dev_x is not None:
                done = list(self.models)

                def checkpoint(env: Any, done: list[Any] = done) -> None:
                    nonlocal best
                    step = env.iteration + 1
                    if step % every and step != n_rounds:
                        return
                    outs = [m.predict(dev_x, num_iteration=step) for m in done]
                    outs.append(env.model.predict(dev_x, num_iteration=step))
                    score = dev.evaluate(self.to_logits(np.column_stack(outs)))
                    best = max(best, (score, -step))  # ties go to fewer rounds
                    if report is not None:
                        report(step, score)
                    if patience and step + best[1] >= patience:  # best[1] is minus the best round
                        raise EarlyStopException(-best[1] - 1, [])

                callbacks.append(checkpoint)
            self.models.append(self._regressor().fit(x, y[:, k], callbacks=callbacks))
        if np.isfinite(best[0]):
            self.num_iteration = -best[1]

    def predict_outputs(self, x: sp.csr_matrix) -> np.ndarray:
        """The boosters' own ``predict`` (the scikit-learn wrapper only adds input checks per call)."""
        threads = {"num_threads": 1} if x.shape[0] < SMALL_BATCH else {}
        return np.column_stack(
            [m.booster_.predict(x, num_iteration=self.num_iteration, **threads) for m in self.models]
        )

    def contributions(self, x: sp.csr_matrix) -> tuple[list[sp.csr_matrix], np.ndarray]:
        parts, bias = [], []
        for m in self.models:
            c = sp.csr_matrix(m.predict(x, pred_contrib=True, num_iteration=self.num_iteration), dtype=np.float64)
            parts.append(c[:, :-1].tocsr())
            bias.append(c[:, -1].toarray().ravel())
        return parts, np.column_stack(bias)

    def importances(self) -> np.ndarray:
        return np.stack(
            [m.booster_.feature_importance("gain", iteration=self.num_iteration) for m in self.models]
        ).astype(np.float64)

    def _tree_params(self) -> int:
        leaves = [
            t["num_leaves"]
            for m in self.models
            for t in m.booster_.dump_model(num_iteration=self.num_iteration)["tree_info"]
        ]
        return int(sum(2 * n - 1 for n in leaves))  # n leaf values + (n - 1) thresholds

    def _extra_state(self) -> dict[str, Any]:
        return {"num_iteration": self.num_iteration}


# -- scikit-learn trees ----------------------------------------------------------------------


def tree_path_contributions(trees: Sequence[Any], x: sp.csr_matrix) -> tuple[list[sp.csr_matrix], np.ndarray]:
    """Decision-path contributions of fitted sklearn regression trees, averaged (Saabas' method).

    Along each text's root→leaf path, the change of the node value at every split is credited
    to the split's feature; bias (root value) plus the credits equals the leaf value exactly,
    and averaging over trees gives a forest's prediction. Vectorised as one product per output:
    path indicator [n, all nodes] @ credit of each node to its parent's feature [all nodes, F].
    """
    paths, rows, cols, credits, roots = [], [], [], [], []
    offset = 0
    for estimator in trees:
        tree = estimator.tree_
        value = tree.value[:, :, 0]  # [nodes, K]: mean target in each node
        left, right = tree.children_left, tree.children_right
        parent = np.full(tree.node_count, -1)
        internal = np.flatnonzero(left >= 0)
        parent[left[internal]] = internal
        parent[right[internal]] = internal
        child = np.flatnonzero(parent >= 0)
        rows.append(child + offset)
        cols.append(tree.feature[parent[child]])
        credits.append(value[child] - value[parent[child]])
        paths.append(estimator.decision_path(x))
        roots.append(value[0])
        offset += tree.node_count
    path = sp.hstack(paths, format="csr", dtype=np.float64)
    row, col, credit = np.concatenate(rows), np.concatenate(cols), np.concatenate(credits)
    shape = (offset, x.shape[1])
    parts = [
        (path @ sp.csr_matrix((credit[:, k], (row, col)), shape=shape)).tocsr() / len(trees)
        for k in range(credit.shape[1])
    ]
    return parts, np.tile(np.mean(roots, axis=0), (x.shape[0], 1))


def tree_params(estimator: Any) -> int:
    """Thresholds (internal nodes) plus leaf values (leaves × outputs) of one sklearn tree."""
    tree = estimator.tree_
    n_leaves = int((tree.children_left < 0).sum())
    return (tree.node_count - n_leaves) + n_leaves * int(tree.n_outputs)


class SklearnTreeStudent(ForestStudent):
    reports_while_training = False  # one dev score after all trees are grown: nothing left to prune
    """One multi-output scikit-learn regressor (a forest or a single tree) in ``self.models[0]``."""

    @abstractmethod
    def _estimator(self) -> Any:
        """The unfitted scikit-learn regressor built from the hyper-parameters."""

    def _trees(self) -> list[Any]:
        model = self.models[0]
        return list(getattr(model, "estimators_", [model]))

    def _fit_models(
        self, x: sp.csr_matrix, y: np.ndarray, dev: DevSet | None, dev_x: sp.csr_matrix | None, report: Reporter | None
    ) -> None:
        self.models = [self._estimator().fit(x, y[:, 0] if y.shape[1] == 1 else y)]
        if report is not None and dev is not None and dev_x is not None:
            report(1, dev.evaluate(self.to_logits(self.predict_outputs(dev_x))))

    def predict_outputs(self, x: sp.csr_matrix) -> np.ndarray:
        """The mean of the trees' predictions, summed in a fixed order on one thread.

        The same as the forest's own ``predict``, but bit-for-bit reproducible (threads add the
        trees in any order) and fast on one sentence: no thread pool per call, and no input
        check per tree (the featuriser's float32 CSR is what trees need); ~15 ms → ~2 ms.
        """
        x = sp.csr_matrix(x, dtype=np.float32)
        trees = self._trees()
        out = np.zeros((x.shape[0], self.models[0].n_outputs_))
        for tree in trees:
            out += np.asarray(tree.predict(x, check_input=False)).reshape(x.shape[0], -1)
        return out / len(trees)

    def contributions(self, x: sp.csr_matrix) -> tuple[list[sp.csr_matrix], np.ndarray]:
        return tree_path_contributions(self._trees(), x)

    def importances(self) -> np.ndarray:
        return np.asarray(self.models[0].feature_importances_, dtype=np.float64)[None, :]

    def _tree_params(self) -> int:
        return sum(tree_params(t) for t in self._trees())


@register("forest")
class ForestEnsembleStudent(SklearnTreeStudent):
    """A random forest or extra-trees forest (``kind``), averaging fully multi-output trees.

    Cost grows with trees × features tried per split (measured on SST-2, 67k sentences, 15k
    n-grams: ~0.3 s per tree with "sqrt", ~1 s with a 5% fraction), so the space stays small.
    """

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "kind": "random",  # "random" (RandomForestRegressor) | "extra" (ExtraTreesRegressor)
            "n_estimators": 100,
            "max_depth": 40,  # 0 or None = unlimited
            "min_samples_leaf": 2,
            "max_features": "sqrt",  # features tried per split: "sqrt", "log2" or a fraction
            "max_samples": 0.5,  # bootstrap fraction per tree; 1.0 = no bootstrap
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        return {
            **cls.suggest_features(trial, word=[2000, 5000, 10000], char=[0, 2000, 5000]),
            "kind": trial.suggest_categorical("kind", ["random", "extra"]),
            "n_estimators": trial.suggest_int("n_estimators", 50, 150, step=50),
            "max_depth": trial.suggest_int("max_depth", 10, 60, step=10),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 10, log=True),
            "max_features": trial.suggest_categorical("max_features", ["sqrt", 0.01, 0.03]),
            "max_samples": trial.suggest_float("max_samples", 0.3, 1.0),
        }

    def _estimator(self) -> Any:
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        h = self.hparams
        kinds = {"random": RandomForestRegressor, "extra": ExtraTreesRegressor}
        if h["kind"] not in kinds:
            raise ValueError(f"unknown forest kind {h['kind']!r} (expected random or extra)")
        max_samples = float(h["max_samples"])
        return kinds[h["kind"]](
            n_estimators=int(h["n_estimators"]),
            max_depth=int(h["max_depth"] or 0) or None,
            min_samples_leaf=int(h["min_samples_leaf"]),
            max_features=h["max_features"],
            bootstrap=max_samples < 1.0,
            max_samples=max_samples if max_samples < 1.0 else None,
            random_state=int(h["seed"]),
            n_jobs=int(h["n_jobs"]),
        )


@register("tree")
class TreeStudent(SklearnTreeStudent):
    """One shallow decision tree: the most readable student; ``rules_text`` prints its rules."""

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        return {
            **super().default_hparams(),
            "max_depth": 8,
            "min_samples_leaf": 20,
        }

    @classmethod
    def search_space(cls, trial: Any, extras: Sequence[str] = ()) -> dict[str, Any]:
        return {
            **cls.suggest_features(trial, word=[2000, 5000, 10000], char=[0, 2000, 5000]),
            "max_depth": trial.suggest_int("max_depth", 3, 12),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100, log=True),
        }

    def _estimator(self) -> Any:
        from sklearn.tree import DecisionTreeRegressor

        h = self.hparams
        return DecisionTreeRegressor(
            max_depth=int(h["max_depth"]), min_samples_leaf=int(h["min_samples_leaf"]), random_state=int(h["seed"])
        )

    def rules_text(self, max_depth: int = 12) -> str:
        """The tree as nested if/else rules on n-gram TF-IDF weights (0 = the n-gram is absent)."""
        from sklearn.tree import export_text

        assert self.featurizer is not None, "fit or load the student first"
        header = (
            f"# value = [{', '.join(self.output_names())}]\n"
            "# 'feature <= t' tests an n-gram's TF-IDF weight; weight 0 means the n-gram is absent.\n"
        )
        names = self.featurizer.feature_names()
        return header + export_text(self.models[0], feature_names=names, max_depth=max_depth, decimals=3)
