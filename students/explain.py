"""Explanations of the decision-forest students, as files a study logs next to a trial.

Trees are the one student family whose reasoning can be read directly; these files show it in
the words of the data (n-grams), so a reader can check *why* the student agrees with the
teacher, not only how often:

* ``top_features.md``: per output, the n-grams with the largest mean |contribution| on dev
  texts (how much they move the prediction when present and when absent), then the model's own
  importances (LightGBM gain, scikit-learn impurity decrease).
* ``sentences.md``: a sample of dev sentences with their largest per-feature contributions
  (LightGBM ``pred_contrib``, i.e. TreeSHAP; sklearn decision-path credits). Bias + contributions = output.
* ``tree_rules.txt``: for a student with ``rules_text`` (the single tree), its rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    from students.forests import ForestStudent


def _md(name: str) -> str:
    """An n-gram as a markdown code span that cannot break a table."""
    return "`" + name.replace("`", "'").replace("|", "¦") + "`"


def _signed(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.4f}"


def _top(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Indices of the ``top_k`` largest scores, without negligible ones (float noise, zero-gain splits)."""
    order = np.argsort(-scores, kind="stable")[:top_k]
    return order[scores[order] > 1e-4 * max(float(scores.max(initial=0.0)), 1e-12)]


def _units(student: ForestStudent) -> str:
    if student.num_labels == 2:
        return (
            f"Contributions are in logit-margin units: positive pushes towards `{student.label_names[1]}`, "
            f"negative towards `{student.label_names[0]}`."
        )
    return "Contributions are in centred-logit units of each class: positive pushes towards that class."


def top_features(
    student: ForestStudent,
    names: np.ndarray,
    parts: Sequence[sp.csr_matrix],
    x: sp.csr_matrix,
    top_k: int = 30,
) -> str:
    """Global view: n-grams ranked by mean |contribution| per output, then native importances."""
    lines = [f"# Top features of `{student.name}`", ""]
    n = x.shape[0]
    if n:
        lines += [f"Mean over {n} dev texts. {_units(student)}", ""]
        present = (x > 0).astype(np.float64)
        count = np.asarray(present.sum(axis=0)).ravel()
        for title, c in zip(student.output_names(), parts, strict=True):
            mean_abs = np.asarray(abs(c).sum(axis=0)).ravel() / n
            total = np.asarray(c.sum(axis=0)).ravel()
            when_present = np.asarray(c.multiply(present).sum(axis=0)).ravel()
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_present = when_present / count
                mean_absent = (total - when_present) / (n - count)
            lines += [
                f"## {title}",
                "",
                "| rank | n-gram | mean abs. contribution | mean when present | mean when absent | texts with it |",
                "|---:|---|---:|---:|---:|---:|",
            ]
            for rank, f in enumerate(_top(mean_abs, top_k), 1):
                lines.append(
                    f"| {rank} | {_md(names[f])} | {mean_abs[f]:.4f} | {_signed(mean_present[f])} "
                    f"| {_signed(mean_absent[f])} | {int(count[f])} |"
                )
            lines.append("")
    importance = student.importances()
    titles = student.output_names() if len(importance) > 1 else ["all outputs"]
    lines += [
        "# Model importances",
        "",
        "LightGBM: total split gain; scikit-learn: impurity decrease (normalised).",
        "",
    ]
    for title, imp in zip(titles, importance, strict=True):
        share = imp / imp.sum() if imp.sum() > 0 else imp
        lines += [f"## {title}", "", "| rank | n-gram | share |", "|---:|---|---:|"]
        for rank, f in enumerate(_top(share, top_k), 1):
            lines.append(f"| {rank} | {_md(names[f])} | {share[f]:.4f} |")
        lines.append("")
    return "\n".join(lines)


def sentences(
    student: ForestStudent,
    texts: Sequence[str],
    names: np.ndarray,
    parts: Sequence[sp.csr_matrix],
    bias: np.ndarray,
    x: sp.csr_matrix,
    sample: int = 20,
    per_text: int = 8,
) -> str:
    """Local view: for evenly spaced dev texts, the features that moved the prediction most."""
    outputs = bias + np.column_stack([np.asarray(c.sum(axis=1)).ravel() for c in parts])
    logits = student.to_logits(outputs)
    lines = [f"# Per-sentence contributions of `{student.name}`", "", _units(student), ""]
    picks = np.unique(np.linspace(0, len(texts) - 1, min(sample, len(texts))).round().astype(int))
    for i in picks:
        pred = int(logits[i].argmax())
        k = 0 if student.num_labels == 2 else pred  # which output explains the decision
        row = parts[k].getrow(i)
        order = np.argsort(-np.abs(row.data), kind="stable")[:per_text]
        shown = sum(row.data[order])
        lines += [
            f"## {i}: {texts[i]!r}",
            "",
            f"prediction `{student.label_names[pred]}`, logits {[round(float(v), 3) for v in logits[i]]}; "
            f"{student.output_names()[k]} = bias {bias[i, k]:+.3f} + contributions {outputs[i, k] - bias[i, k]:+.3f}",
            "",
        ]
        for j in order:
            f = row.indices[j]
            state = "present" if x[i, f] > 0 else "absent"
            lines.append(f"- {_md(names[f])} ({state}): {row.data[j]:+.4f}")
        lines += [f"- (all other features): {outputs[i, k] - bias[i, k] - shown:+.4f}", ""]
    return "\n".join(lines)


def explain(
    student: ForestStudent, dev_texts: Sequence[str], sample: int = 20, max_texts: int = 200, budget: int = 400
) -> dict[str, str]:
    """File name → content: global top features, per-sentence contributions, and tree rules if any.

    Contributions are computed on the first ``max_texts`` dev texts only, and on fewer when the
    student has many outputs (at most ``budget`` text × output pairs, at least ``sample`` texts):
    LightGBM's exact TreeSHAP costs ~15 ms per text and output for 200 trees, so 200 texts of
    Sara's 56 intents would take longer than the trial's training; a few hundred pairs rank the
    top n-grams well enough.
    """
    assert student.featurizer is not None, "fit or load the student first"
    n_outputs = max(1, len(student.output_names()))
    texts = list(dev_texts)[: min(max_texts, max(sample, budget // n_outputs))]
    names = np.asarray(student.featurizer.feature_names(), dtype=object)
    x = student.features(texts) if texts else sp.csr_matrix((0, len(names)), dtype=np.float32)
    parts, bias = student.contributions(x) if texts else ([], np.zeros((0, 0)))
    files = {"top_features.md": top_features(student, names, parts, x)}
    if texts:
        files["sentences.md"] = sentences(student, texts, names, parts, bias, x, sample)
    rules = getattr(student, "rules_text", None)
    if callable(rules):
        files["tree_rules.txt"] = rules()
    return files
