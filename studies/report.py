"""Tables and figures shared by ``studies.compare`` and ``studies.probe``.

A table is a list of columns and a list of row dicts; a cell is a string, a number or a ``Stat``
(mean ± sd over seeds). The same rows are written to the terminal, to Markdown (for reading and
for MLflow's artifact viewer) and to CSV (for anything else), so the three never disagree.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation (sample sd, ddof=1) of ``n`` values; ``sd`` is None for a single model."""

    mean: float
    sd: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float], single: bool = False) -> Stat:
        arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
        if arr.size == 0:
            return cls(float("nan"), None, 0)
        sd = None if single else float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        return cls(float(arr.mean()), sd, int(arr.size))

    def scaled(self, factor: float) -> Stat:
        return Stat(self.mean * factor, None if self.sd is None else self.sd * abs(factor), self.n)


@dataclass(frozen=True)
class Column:
    key: str  # row dict key (CSV header; a Stat gives <key>_mean and <key>_sd)
    title: str  # Markdown / terminal header
    fmt: str = ".4f"  # format spec of numbers


Cell = Stat | float | int | str | None


def format_cell(value: Cell, fmt: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, Stat):
        if math.isnan(value.mean):
            return "—"
        text = format(value.mean, fmt)
        return text if value.sd is None else f"{text} ± {format(value.sd, fmt)}"
    if isinstance(value, float) and math.isnan(value):
        return "—"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def _cells(columns: Sequence[Column], rows: Sequence[dict[str, Cell]]) -> list[list[str]]:
    return [[format_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]


def markdown_table(columns: Sequence[Column], rows: Sequence[dict[str, Cell]]) -> str:
    lines = ["| " + " | ".join(c.title for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in _cells(columns, rows)]
    return "\n".join(lines)


def terminal_table(columns: Sequence[Column], rows: Sequence[dict[str, Cell]]) -> str:
    """A plain aligned table (no dependency) for the terminal; text left-aligned, numbers right-aligned."""
    body = _cells(columns, rows)
    widths = [max(len(c.title), *(len(r[i]) for r in body)) if body else len(c.title) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c.key), Stat | int | float) for row in rows) for c in columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line([c.title for c in columns]), rule, *(line(r) for r in body)])


def write_csv(path: str | Path, columns: Sequence[Column], rows: Sequence[dict[str, Cell]]) -> Path:
    """Machine-readable twin of the Markdown table: a Stat becomes ``<key>_mean``, ``<key>_sd``, ``<key>_n``."""
    stat_keys = {c.key for c in columns if any(isinstance(r.get(c.key), Stat) for r in rows)}
    header: list[str] = []
    for c in columns:
        header += [f"{c.key}_mean", f"{c.key}_sd", f"{c.key}_n"] if c.key in stat_keys else [c.key]
    out = Path(path)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            values: list[Any] = []
            for c in columns:
                value = row.get(c.key)
                if c.key in stat_keys:
                    stat = value if isinstance(value, Stat) else Stat(float("nan"), None, 0)
                    values += [_num(stat.mean), _num(stat.sd), stat.n]
                else:
                    values.append(_num(value) if isinstance(value, float) else ("" if value is None else value))
            writer.writerow(values)
    return out


def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


# -- Pareto plot ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One model on the score/latency plane, with its spread over seeds."""

    name: str
    x: float  # latency (lower is better)
    y: float  # score (higher is better)
    x_sd: float = 0.0
    y_sd: float = 0.0
    teacher: bool = False


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points (no other point is at least as fast and as good, and better in one),
    sorted by latency."""
    front = []
    for i, p in enumerate(points):
        dominated = any(q.x <= p.x and q.y >= p.y and (q.x < p.x or q.y > p.y) for j, q in enumerate(points) if j != i)
        if not dominated and math.isfinite(p.x) and math.isfinite(p.y):
            front.append(i)
    return sorted(front, key=lambda i: (points[i].x, -points[i].y))


LABEL_ABOVE, LABEL_BELOW = (6, 6), (6, -13)  # a point's name, offset in points


def label_offsets(points: Sequence[Point]) -> list[tuple[int, int]]:
    """Where each point's name goes (points offset): above right, or below right when a point
    labelled before it sits close by (within a quarter on the log x axis, 3 % of the y range),
    so two students of near-equal speed and score keep readable names."""
    ys = [p.y for p in points]
    span = (max(ys) - min(ys)) or 1.0
    offsets: list[tuple[int, int]] = []
    for i, p in enumerate(points):
        crowded = any(
            offsets[j] == LABEL_ABOVE and abs(math.log(p.x / q.x)) < math.log(1.25) and abs(p.y - q.y) < 0.03 * span
            for j, q in enumerate(points[:i])
            if p.x > 0 and q.x > 0
        )
        offsets.append(LABEL_BELOW if crowded else LABEL_ABOVE)
    return offsets


def pareto_png(path: str | Path, points: Sequence[Point], xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    front = pareto_front(points)
    if len(front) > 1:
        fx = [points[i].x for i in front]
        fy = [points[i].y for i in front]
        ax.step(fx, fy, where="post", color="tab:gray", linestyle="--", linewidth=1, label="Pareto front", zorder=1)
    labelled = False
    offsets = label_offsets(points)
    for i, p in enumerate(points):
        on_front = i in front
        if p.teacher:
            ax.scatter([p.x], [p.y], marker="*", s=260, color="tab:red", zorder=3, label="teacher")
        else:
            ax.errorbar(
                [p.x],
                [p.y],
                xerr=[[min(p.x_sd, p.x * 0.999)], [p.x_sd]],  # keep the lower whisker positive on a log axis
                yerr=[p.y_sd],
                fmt="o",
                markersize=7,
                capsize=3,
                color="tab:blue" if on_front else "tab:cyan",
                zorder=2,
                label=None if labelled else "student (mean ± sd over seeds; dark = on the front)",
            )
            labelled = True
        ax.annotate(p.name, (p.x, p.y), textcoords="offset points", xytext=offsets[i], fontsize=9)
    ax.set_xscale("log")
    return _finish(fig, ax, path, xlabel, ylabel, title, legend=True)


def _finish(fig: Any, ax: Any, path: str | Path, xlabel: str, ylabel: str, title: str, legend: bool) -> Path:
    """Label, grid, legend, save and close: the end every plot here shares."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def curves_png(
    path: str | Path, series: dict[str, list[tuple[float, float, float]]], xlabel: str, ylabel: str, title: str
) -> Path:
    """One line per model family through its (x, y ± sd) points, e.g. a student's score against its sparsity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, points in sorted(series.items()):
        points = sorted(p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]))
        if not points:
            continue
        xs, ys, sds = zip(*points, strict=True)
        ax.errorbar(xs, ys, yerr=sds, marker="o", capsize=3, label=name)
    return _finish(fig, ax, path, xlabel, ylabel, title, legend=bool(series))


def pareto_html(path: str | Path, points: Sequence[Point], xlabel: str, ylabel: str, title: str) -> Path:
    """The same plot, interactive (hover for numbers); plotly.js is embedded so it opens offline."""
    import plotly.graph_objects as go

    fig = go.Figure()
    front = pareto_front(points)
    if len(front) > 1:
        fig.add_trace(
            go.Scatter(
                x=[points[i].x for i in front],
                y=[points[i].y for i in front],
                mode="lines",
                line={"shape": "hv", "dash": "dash", "color": "gray"},
                name="Pareto front",
            )
        )
    students = [p for p in points if not p.teacher]
    if students:
        fig.add_trace(
            go.Scatter(
                x=[p.x for p in students],
                y=[p.y for p in students],
                error_x={"type": "data", "array": [p.x_sd for p in students]},
                error_y={"type": "data", "array": [p.y_sd for p in students]},
                mode="markers+text",
                text=[p.name for p in students],
                textposition="top right",
                marker={"size": 10},
                name="students (mean ± sd over seeds)",
                hovertemplate="%{text}<br>latency %{x:.3f} ms<br>score %{y:.4f}<extra></extra>",
            )
        )
    for p in points:
        if p.teacher:
            fig.add_trace(
                go.Scatter(
                    x=[p.x],
                    y=[p.y],
                    mode="markers+text",
                    text=[p.name],
                    textposition="top right",
                    marker={"symbol": "star", "size": 18, "color": "crimson"},
                    name="teacher",
                    hovertemplate="%{text}<br>latency %{x:.3f} ms<br>score %{y:.4f}<extra></extra>",
                )
            )
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    fig.update_xaxes(type="log")
    out = Path(path)
    fig.write_html(str(out), include_plotlyjs=True, full_html=True)
    return out


# -- heatmap --------------------------------------------------------------------------------------


def heatmap_png(
    path: str | Path, values: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str
) -> Path:
    """Rows × columns of accuracies, annotated, NaN cells left blank (a model that could not be probed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.0, 2.8 + 0.9 * len(col_labels)), 1.6 + 0.6 * len(row_labels)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if math.isfinite(data[i, j]):
                color = "black" if data[i, j] > 0.6 else "white"
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    fig.colorbar(image, ax=ax, label="probe accuracy")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
