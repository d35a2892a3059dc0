"""Linear and few-shot probes on synthetic features (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchclip.evaluation.probe import (
    few_shot_probe,
    format_mean_std,
    linear_probe,
    stratified_split,
    sweep_C,
)


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 8, spread: float = 0.5,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    return centers[y] + rng.normal(0, spread, size=(len(y), dim)), y


def test_separable_blobs_are_solved() -> None:
    x, y = blobs(30)
    tx, ty = blobs(10, seed=0)  # same centres (same seed), fresh noise below
    tx = tx + np.random.default_rng(1).normal(0, 0.1, tx.shape)
    res = linear_probe(x, y, tx, ty)
    assert res.metrics["acc1"] == 1.0 and res.metrics["mean_per_class_recall"] == 1.0
    assert res.sweep and 1e-6 <= res.C <= 1e6 and res.n_train == len(x)
    assert res.scores.shape == (30, 3)


def test_sweep_refines_to_an_eighth_of_a_decade() -> None:
    x, y = blobs(20, spread=4.0, seed=3)  # overlapping classes: C matters
    vx, vy = blobs(20, spread=4.0, seed=3)
    vx = vx + np.random.default_rng(5).normal(0, 2.0, vx.shape)
    best, visited = sweep_C(x, y, vx, vy)
    exps = sorted(np.log10(list(visited)))
    assert exps[0] == pytest.approx(-6) and exps[-1] == pytest.approx(6)
    assert min(np.diff(exps)) == pytest.approx(0.125)
    assert len(visited) <= 7 + 2 * 4  # coarse grid plus two probes per halving
    assert visited[best] == max(visited.values())


def test_given_C_and_validation_set() -> None:
    x, y = blobs(10)
    res = linear_probe(x, y, x, y, C=0.316)
    assert res.C == 0.316 and res.sweep == {}
    res2 = linear_probe(x[::2], y[::2], x, y, val_x=x[1::2], val_y=y[1::2])
    assert res2.n_train == len(x)  # refit on train + validation
    with pytest.raises(ValueError, match="dims"):
        linear_probe(x, y, x[:, :3], y)
    with pytest.raises(ValueError, match="empty"):
        linear_probe(x[:0], y[:0], x, y)


def test_extra_test_sets_share_one_fit() -> None:
    x, y = blobs(10)
    shifted = x + 100.0  # far outside the training range
    res = linear_probe(x, y, x, y, C=1.0, extra_tests={"same": (x, y), "shifted": (shifted, y)})
    assert res.extra["same"] == res.metrics and set(res.extra) == {"same", "shifted"}
    fs = few_shot_probe(x, y, x, y, ks=(2,), seeds=(0,), C=1.0, extra_tests={"same": (x, y)})
    assert fs.summary(test="same") == fs.summary()


def test_classes_missing_from_training_never_win() -> None:
    x, y = blobs(5, n_classes=2)
    res = linear_probe(x, y, x, y, C=1.0, num_classes=4)
    assert res.scores.shape == (10, 4) and (res.scores[:, 2:] == 0).all()


def test_few_shot_shapes_and_summary() -> None:
    x, y = blobs(20, n_classes=4)
    tx, ty = blobs(5, n_classes=4)
    groups = np.arange(len(y)) // 2
    res = few_shot_probe(x, y, tx, ty, ks=(1, 4), seeds=(0, 1), groups=groups)
    summary = res.summary()
    assert list(summary) == [1, 4] and all(len(res.runs[k]) == 2 for k in (1, 4))
    assert all(0 <= m <= 1 and s >= 0 for m, s in summary.values())
    assert summary[4][0] > 0.9  # well-separated blobs: four shots suffice
    assert res.matches(0.0) == 1 and res.matches(1.1) is None
    assert format_mean_std(0.4123, 0.03) == "41.2 ± 3.0"
    with pytest.raises(ValueError, match="k must be"):
        few_shot_probe(x, y, tx, ty, ks=(0,))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=2, max_size=40), st.floats(0.1, 0.5), st.integers(0, 5),
       st.booleans())
def test_stratified_split_properties(labels: list[int], fraction: float, seed: int, grouped: bool) -> None:
    y = np.array(labels)
    groups = y * 100 + np.arange(len(y)) // 3 if grouped else None  # groups within one class
    tr, va = stratified_split(y, fraction, seed, groups)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(y)))  # a partition
    assert set(y[tr]) == set(y)  # every class keeps training examples
    if groups is not None:
        assert not set(groups[tr]) & set(groups[va])  # no group on both sides
