"""Plots for evaluation results: confusion matrices, few-shot curves, the effective-robustness scatter,
and template comparisons. matplotlib is imported lazily with the non-interactive Agg backend, so the rest
of the evaluation package (and servers without a display) never need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_confusion", "plot_few_shot", "plot_robustness", "plot_bars"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install matplotlib") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_confusion(cm: np.ndarray, classnames: Sequence[str], path: str | os.PathLike[str], *,
                   title: str = "", normalize: bool = True, max_labels: int = 40) -> Path:
    """A ``[true, predicted]`` confusion matrix as a heat map, rows normalized to recall by default.

    Beyond ``max_labels`` classes the tick labels are dropped (they would be unreadable); the structure
    (a diagonal, a column that absorbs everything) is what the plot is for.
    """
    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classnames):
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classnames)} class names")
    data = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    n = len(classnames)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="recall" if normalize else "count")
    if n <= max_labels:
        ax.set_xticks(range(n), classnames, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), classnames, fontsize=8)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if cm[i, j]:
                        ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                                color="white" if data[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def plot_few_shot(summary: Mapping[int, tuple[float, float]], path: str | os.PathLike[str], *,
                  zero_shot: Mapping[str, float] | None = None, title: str = "",
                  ylabel: str = "top-1 accuracy (%)", extra_curves: Mapping[str, Mapping[int, tuple[float, float]]] | None = None) -> Path:
    """Accuracy of k-shot linear probes against k (log2 axis, mean +- std over seeds), with zero-shot
    accuracies as horizontal lines: where a curve crosses a line is the paper's "zero-shot matches k-shot"."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = {"linear probe": summary, **(extra_curves or {})}
    for label, curve in curves.items():
        ks = sorted(curve)
        mean = np.array([curve[k][0] for k in ks]) * 100
        std = np.array([curve[k][1] for k in ks]) * 100
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=f"{label} (k-shot)")
    for i, (label, acc) in enumerate((zero_shot or {}).items()):
        ax.axhline(acc * 100, linestyle="--", color=f"C{i + len(curves)}", label=f"zero-shot: {label}")
    ax.set_xscale("log", base=2)
    all_ks = sorted({k for c in curves.values() for k in c})
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("labelled examples per class (k)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def plot_robustness(points: Mapping[str, tuple[float, float]], path: str | os.PathLike[str], *,
                    title: str = "", xlabel: str = "in-style accuracy (%)",
                    ylabel: str = "new-style accuracy (%)", chance: float | None = None,
                    trails: Mapping[str, Sequence[tuple[float, float]]] | None = None,
                    curves: Mapping[str, Sequence[tuple[float, float]]] | None = None) -> Path:
    """The paper's effective-robustness plot in miniature: each model at (in-distribution,
    shifted) accuracy, with the y = x line of a perfectly robust model. Points far below the line lose
    accuracy under the shift; the paper's finding is that zero-shot models sit closer to it than probes.
    ``trails`` are sequences of points (e.g. checkpoints along training) drawn as lines; ``curves`` are
    fitted trends (plain dashed lines)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    trail_pts = [p for t in (trails or {}).values() for p in t]
    xs = [v[0] * 100 for v in [*points.values(), *trail_pts]]
    ys = [v[1] * 100 for v in [*points.values(), *trail_pts]]
    hi = max([*xs, *ys, 1.0]) * 1.1
    ax.plot([0, hi], [0, hi], color="grey", linestyle=":", label="y = x (no drop)")
    if chance is not None:
        ax.axhline(chance * 100, color="lightgrey", linestyle="--", label="chance")
    for label, curve in (curves or {}).items():
        ax.plot([p[0] * 100 for p in curve], [p[1] * 100 for p in curve], "--", color="grey", lw=1, label=label)
    for i, (label, trail) in enumerate((trails or {}).items()):
        tx, ty = [p[0] * 100 for p in trail], [p[1] * 100 for p in trail]
        ax.plot(tx, ty, ("-", "--", "-.")[i % 3], color=("black", "tab:red", "tab:green")[i % 3], alpha=0.6,
                marker=".", label=label, zorder=2)
        if tx:
            ax.annotate("start", (tx[0], ty[0]), fontsize=6, alpha=0.7)
    seen: dict[str, int] = {}
    for label, (x, y) in points.items():
        # one marker per kind of model (zero-shot, probe, baseline); colours distinct within a kind
        marker = "o" if label.startswith("zero-shot") else "x" if "random" in label else "s" if "linear" in label else "^"
        seen[marker] = seen.get(marker, -1) + 1
        ax.scatter([x * 100], [y * 100], marker=marker, s=60, label=label, zorder=3,
                   color=plt.cm.tab10(seen[marker] % 10))
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: points stay visible
    return _save(fig, path)


def plot_bars(groups: Mapping[str, Mapping[str, float]], path: str | os.PathLike[str], *, title: str = "",
              ylabel: str = "top-1 accuracy (%)", chance: float | None = None) -> Path:
    """Grouped bars: ``groups[group][series] = value`` (0-1), e.g. template set per evaluation split."""
    plt = _pyplot()
    group_names = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(group_names) + 2), 4))
    x = np.arange(len(group_names))
    for i, s in enumerate(series):
        vals = [groups[g].get(s, np.nan) * 100 for g in group_names]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=s)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    if chance is not None:
        ax.axhline(chance * 100, color="grey", linestyle="--", label="chance")
    top = np.nanmax([v * 100 for g in groups.values() for v in g.values()] + [1.0])
    ax.set_ylim(0, top * 1.12)  # room for the value labels
    ax.set_xticks(x, group_names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
