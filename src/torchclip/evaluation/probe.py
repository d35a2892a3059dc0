"""Linear probes on frozen image features, following the paper's protocol (reference §8).

scikit-learn's L-BFGS logistic regression (max_iter 1000) on cached features. The inverse regularization
strength C is chosen on a validation split by the paper's parametric search: start from C = 1e-6, 1e-4, ...,
1e6, then repeatedly halve the step (in log10) around the best value until it is 1/8 of a decade; about 15
fits instead of a 97-point grid. The chosen C is then refit on train + validation and scored once on test.

Few-shot probes draw k examples per class for several seeds and report mean +- std, the numbers behind
the paper's "zero-shot matches a 4-shot linear probe" comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .metrics import classification_metrics

__all__ = ["ProbeResult", "FewShotResult", "fit_logistic", "sweep_C", "linear_probe", "few_shot_probe",
           "stratified_split", "preprocess_features"]

Normalize = Literal["none", "l2", "standardize"]
TestSet = tuple[torch.Tensor | np.ndarray, np.ndarray | Sequence[int]]  # (features [N, D], labels [N])
_SMALL = 4_000_000  # feature-matrix entries below which BLAS threading does not pay


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def preprocess_features(train: np.ndarray, *others: np.ndarray, how: Normalize = "none") -> list[np.ndarray]:
    """``none`` (the paper), ``l2`` (unit rows) or ``standardize`` (train mean/std applied to all splits)."""
    arrays = [np.asarray(train, dtype=np.float64), *(np.asarray(o, dtype=np.float64) for o in others)]
    if how == "none":
        return arrays
    if how == "l2":
        return [a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12) for a in arrays]
    if how == "standardize":
        mean, std = arrays[0].mean(axis=0), arrays[0].std(axis=0) + 1e-8
        return [(a - mean) / std for a in arrays]
    raise ValueError(f"unknown feature normalization {how!r}")


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, *, max_iter: int = 1000, seed: int = 0) -> Any:
    """One L-BFGS multinomial logistic regression. Convergence warnings are silenced: at extreme C the
    sweep deliberately visits badly conditioned problems, and their validation score already says so.

    Small problems run single-threaded: BLAS threads spinning on a 100 x 200 matrix cost 5-10x more than
    they save, worse still on a machine busy with other work.
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs", random_state=seed)
    with warnings.catch_warnings(), threadpool_limits(limits=1 if x.size < _SMALL else None):
        warnings.simplefilter("ignore")
        clf.fit(x, y)
    return clf


def _scores(clf: Any, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities ``[N, num_classes]``; classes the probe never saw get 0 (they never win)."""
    proba = clf.predict_proba(x)
    out = np.zeros((x.shape[0], num_classes))
    out[:, clf.classes_.astype(int)] = proba
    return out


def sweep_C(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, *,
            lo: float = -6.0, hi: float = 6.0, coarse_step: float = 2.0, resolution: float = 0.125,
            max_iter: int = 1000, seed: int = 0) -> tuple[float, dict[float, float]]:
    """Best C by validation accuracy, and every (C, accuracy) visited.

    Ties go to the smaller C (stronger regularization), the safer choice when the validation set is tiny.
    """
    if len(np.unique(train_y)) < 2:
        return 1.0, {}  # one class: nothing to regularize, any C predicts it

    scores: dict[float, float] = {}

    def score(e: float) -> float:
        e = round(min(max(e, lo), hi), 6)
        if e not in scores:
            clf = fit_logistic(train_x, train_y, 10.0**e, max_iter=max_iter, seed=seed)
            scores[e] = float((clf.predict(val_x) == val_y).mean())
        return scores[e]

    def best() -> float:
        return max(scores, key=lambda e: (scores[e], -e))

    for e in np.arange(lo, hi + 1e-9, coarse_step):
        score(float(e))
    step = coarse_step
    while step > resolution + 1e-12:
        step /= 2
        center = best()
        score(center - step)
        score(center + step)
    return 10.0 ** best(), {10.0**e: s for e, s in sorted(scores.items())}


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0,
                     groups: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with about ``fraction`` of each class in val.

    With ``groups`` (e.g. a concept shared by several images), whole groups move together, so the
    validation set never holds another picture of a training example's concept.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    unit = np.asarray(groups) if groups is not None else np.arange(len(labels))
    val_mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        units = np.unique(unit[labels == c])
        if len(units) < 2:
            continue
        n_val = max(1, int(round(fraction * len(units))))
        chosen = rng.choice(units, size=min(n_val, len(units) - 1), replace=False)
        val_mask |= (labels == c) & np.isin(unit, chosen)
    # A group that spans classes could land in both splits; keep it wholly in val.
    val_mask |= np.isin(unit, unit[val_mask])
    return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)


@dataclass
class ProbeResult:
    metrics: dict[str, float]  # on test: acc1, acc5, mean_per_class_recall
    C: float
    sweep: dict[float, float] = field(default_factory=dict)  # C -> validation accuracy
    n_train: int = 0
    scores: np.ndarray | None = None  # [N_test, C] probabilities
    extra: dict[str, dict[str, float]] = field(default_factory=dict)  # metrics on each of extra_tests


def linear_probe(train_x: torch.Tensor | np.ndarray, train_y: np.ndarray | Sequence[int],
                 test_x: torch.Tensor | np.ndarray, test_y: np.ndarray | Sequence[int], *,
                 num_classes: int | None = None, val_x: torch.Tensor | np.ndarray | None = None,
                 val_y: np.ndarray | Sequence[int] | None = None, val_fraction: float = 0.2,
                 groups: Sequence[Any] | None = None, C: float | None = None, refit: bool = True,
                 normalize: Normalize = "none", max_iter: int = 1000, seed: int = 0,
                 extra_tests: Mapping[str, TestSet] | None = None) -> ProbeResult:
    """The paper's linear probe: sweep C on validation, refit on train + val, score test.

    Without ``val_x`` a stratified ``val_fraction`` of train (grouped by ``groups``) is held out for the
    sweep. A given ``C`` skips the sweep and trains on all of train. ``extra_tests`` (name -> (x, y), e.g.
    the same classes under a distribution shift) are scored by the same fitted probe.
    """
    tx, ty, sx, sy = _np(train_x), _np(train_y).astype(int), _np(test_x), _np(test_y).astype(int)
    if len(tx) == 0 or len(sx) == 0:
        raise ValueError(f"empty split: {len(tx)} training and {len(sx)} test samples")
    for name, (ex, _) in {"test": (sx, sy), **(extra_tests or {})}.items():
        if tx.shape[1] != _np(ex).shape[1]:
            raise ValueError(f"train features have {tx.shape[1]} dims but {name} features {_np(ex).shape[1]}")
    k = num_classes if num_classes is not None else int(max(ty.max(), sy.max())) + 1
    sweep: dict[float, float] = {}
    if C is None:
        if val_x is None:
            tr, va = stratified_split(ty, val_fraction, seed, groups)
            if len(va) == 0:
                raise ValueError("too few training samples per class to hold out a validation split; pass C")
            fx, fy, vx, vy = tx[tr], ty[tr], tx[va], ty[va]
        else:
            fx, fy, vx, vy = tx, ty, _np(val_x), _np(val_y).astype(int)
        fx_n, vx_n = preprocess_features(fx, vx, how=normalize)
        C, sweep = sweep_C(fx_n, fy, vx_n, vy, max_iter=max_iter, seed=seed)
        if refit and val_x is not None:
            tx, ty = np.concatenate([tx, vx]), np.concatenate([ty, vy])
        elif not refit:
            tx, ty = fx, fy
    names = ["test", *(extra_tests or {})]
    tests = [(sx, sy), *((_np(x), _np(y).astype(int)) for x, y in (extra_tests or {}).values())]
    tx_n, *test_n = preprocess_features(tx, *(x for x, _ in tests), how=normalize)
    clf = fit_logistic(tx_n, ty, C, max_iter=max_iter, seed=seed) if len(np.unique(ty)) > 1 else None
    results: dict[str, dict[str, float]] = {}
    for name, xn, (_, y) in zip(names, test_n, tests):
        if clf is None:  # one class seen: it is always predicted
            scores = np.zeros((len(xn), k))
            scores[:, int(ty[0])] = 1.0
        else:
            scores = _scores(clf, xn, k)
        results[name] = classification_metrics(torch.from_numpy(scores), torch.from_numpy(y))
        if name == "test":
            test_scores = scores
    metrics = results.pop("test")
    return ProbeResult(metrics, float(C), sweep, len(tx), test_scores, results)


@dataclass
class FewShotResult:
    runs: dict[int, list[dict[str, float]]]  # k -> one metrics dict per seed
    Cs: dict[int, list[float]]
    extra_runs: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)

    def summary(self, metric: str = "acc1", test: str | None = None) -> dict[int, tuple[float, float]]:
        """k -> (mean, std) of ``metric`` over seeds (std with ddof=0; 0 for one seed), on the test set or
        on the named extra test set."""
        runs = self.runs if test is None else self.extra_runs[test]
        return {k: (float(np.mean([r[metric] for r in rs])), float(np.std([r[metric] for r in rs])))
                for k, rs in sorted(runs.items())}

    def matches(self, target: float, metric: str = "acc1") -> int | None:
        """The smallest k whose mean ``metric`` reaches ``target`` (e.g. zero-shot accuracy), else None."""
        for k, (mean, _) in self.summary(metric).items():
            if mean >= target:
                return k
        return None


def _sample_per_class(labels: np.ndarray, k: int, rng: np.random.Generator, allowed: np.ndarray) -> np.ndarray:
    picks = []
    for c in np.unique(labels):
        idx = np.flatnonzero((labels == c) & allowed)
        if len(idx):
            picks.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=int)


def few_shot_probe(pool_x: torch.Tensor | np.ndarray, pool_y: np.ndarray | Sequence[int],
                   test_x: torch.Tensor | np.ndarray, test_y: np.ndarray | Sequence[int], *,
                   ks: Sequence[int] = (1, 2, 4, 8, 16), seeds: Sequence[int] = (0, 1, 2),
                   num_classes: int | None = None, groups: Sequence[Any] | None = None,
                   val_per_class: int = 8, C: float | None = None, normalize: Normalize = "none",
                   max_iter: int = 1000, sweep_max_iter: int = 200, sweep_resolution: float = 0.25,
                   extra_tests: Mapping[str, TestSet] | None = None) -> FewShotResult:
    """k-shot linear probes: for each seed, k training examples per class drawn from ``pool``.

    C is tuned on a separate draw of ``val_per_class`` examples per class from the rest of the pool (never
    from a group that supplied a shot), then the probe is trained on the k shots only. Tuning on extra
    labels flatters the smallest k slightly; pass a fixed ``C`` for a strict k-shot budget. Each probe also
    scores ``extra_tests`` (name -> (x, y)).

    The search is cheaper than the full probe's (dozens of probes, not one): at most ``sweep_max_iter``
    L-BFGS iterations per candidate and a ``sweep_resolution`` of a quarter decade. Large C on a handful
    of separable shots never converges anyway (the weights grow without bound while the predictions stop
    changing), so the extra iterations would only cost time; the chosen C is then fit to ``max_iter``.
    """
    px, py, sx, sy = _np(pool_x), _np(pool_y).astype(int), _np(test_x), _np(test_y).astype(int)
    if len(px) == 0 or len(sx) == 0:
        raise ValueError("few-shot probes need a non-empty pool and test set")
    n_cls = num_classes if num_classes is not None else int(max(py.max(), sy.max())) + 1
    unit = np.asarray(groups) if groups is not None else np.arange(len(py))
    runs: dict[int, list[dict[str, float]]] = {}
    Cs: dict[int, list[float]] = {}
    extra_runs: dict[str, dict[int, list[dict[str, float]]]] = {name: {} for name in extra_tests or {}}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        for seed in seeds:
            rng = np.random.default_rng([seed, k])
            shots = _sample_per_class(py, k, rng, np.ones(len(py), dtype=bool))
            c_k = C
            if c_k is None:
                free = ~np.isin(unit, unit[shots])
                val = _sample_per_class(py, val_per_class, rng, free)
                if len(val) and len(np.unique(py[shots])) > 1:
                    tx, vx = preprocess_features(px[shots], px[val], how=normalize)
                    c_k, _ = sweep_C(tx, py[shots], vx, py[val], max_iter=sweep_max_iter, seed=seed,
                                     resolution=sweep_resolution)
                else:
                    c_k = 1.0
            res = linear_probe(px[shots], py[shots], sx, sy, num_classes=n_cls, C=c_k, normalize=normalize,
                               max_iter=max_iter, seed=seed, extra_tests=extra_tests)
            runs.setdefault(k, []).append(res.metrics)
            Cs.setdefault(k, []).append(float(c_k))
            for name, m in res.extra.items():
                extra_runs[name].setdefault(k, []).append(m)
    return FewShotResult(runs, Cs, extra_runs)


def format_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    """``41.2 ± 3.0`` (percent by default); NaN prints as ``n/a``."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
