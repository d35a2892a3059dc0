"""Metrics: known answers on hand-built score matrices, plus properties against brute-force definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchclip.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    mean_per_class_recall,
    positives_from_index,
    retrieval_recall,
    topk_accuracy,
)


def test_topk_known_answer() -> None:
    scores = torch.tensor([[0.9, 0.05, 0.03, 0.02, 0.0, 0.0],   # label 0: rank 0
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],       # label 0: rank 5 (last)
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],       # label 2: rank 3
                           [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])      # label 3: rank 0
    labels = torch.tensor([0, 0, 2, 3])
    acc = topk_accuracy(scores, labels, (1, 3, 4, 5, 6))
    assert acc == {1: 0.5, 3: 0.5, 4: 0.75, 5: 0.75, 6: 1.0}


def test_accuracy_is_the_exact_fraction() -> None:
    # CLIP_benchmark writes correct / n as a Python float; a float32 mean gives 0.3333333432674408
    acc = topk_accuracy(torch.eye(3)[[0, 2, 0]], torch.tensor([0, 1, 2]), (1,))
    assert acc == {1: 1 / 3} and classification_metrics(torch.eye(9)[:7], torch.arange(7))["acc5"] == 1.0


def test_ties_count_against_the_model() -> None:
    scores = torch.zeros(4, 10)  # a collapsed model: every class ties
    labels = torch.arange(4)
    assert topk_accuracy(scores, labels, (1, 5)) == {1: 0.0, 5: 0.0}


def test_acc5_is_nan_below_five_classes() -> None:
    m = classification_metrics(torch.eye(3), torch.arange(3))
    assert m["acc1"] == 1.0 and math.isnan(m["acc5"]) and m["mean_per_class_recall"] == 1.0


def test_mean_per_class_recall_and_confusion() -> None:
    labels = [0, 0, 0, 0, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 0, 2]
    cm = confusion_matrix(pred, labels, 4)
    assert cm.tolist() == [[3, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    # class 3 is absent and skipped: (3/4 + 1 + 1/2) / 3
    assert mean_per_class_recall(pred, labels, 4) == pytest.approx((0.75 + 1 + 0.5) / 3)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="empty"):
        topk_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must lie"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="NaN"):
        topk_accuracy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))


def test_retrieval_known_answer_with_several_captions() -> None:
    # 3 images, 5 captions: image 0 owns captions 0 and 1, image 1 owns 2, image 2 owns 3 and 4.
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.0, 0.2],    # image 0: best positive (c1) ranks first
                        [0.8, 0.1, 0.3, 0.0, 0.9],    # image 1: c2 is behind c4, c0 -> rank 3
                        [0.0, 0.0, 0.0, 0.2, 0.1]])   # image 2: c3 first
    pos = positives_from_index([0, 0, 1, 2, 2], 3)
    r = retrieval_recall(sim, pos, ks=(1, 2, 3))
    assert r["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert r["text_retrieval_recall@2"] == pytest.approx(2 / 3)
    assert r["text_retrieval_recall@3"] == 1.0
    # captions as queries, over columns: c0 -> img1 (0.8) above img0 (0.1): miss@1; c1 hit; c2 -> img0 (0.5)
    # above img1 (0.3): miss@1; c3 hit; c4 -> img1 (0.9), img0 (0.2) above img2 (0.1): rank 3
    assert r["image_retrieval_recall@1"] == pytest.approx(2 / 5)
    assert r["image_retrieval_recall@2"] == pytest.approx(4 / 5)
    assert r["image_retrieval_recall@3"] == 1.0


def test_ranks_agree_with_recall() -> None:
    from torchclip.evaluation.retrieval import best_positive_ranks, rank_summary

    sim = torch.tensor([[0.1, 0.9, 0.5, 0.0, 0.2], [0.8, 0.1, 0.3, 0.0, 0.9], [0.0, 0.0, 0.0, 0.2, 0.1]])
    pos = positives_from_index([0, 0, 1, 2, 2], 3)
    assert best_positive_ranks(sim, pos).tolist() == [1, 3, 1]
    assert best_positive_ranks(sim.t(), pos.t()).tolist() == [2, 1, 2, 1, 3]
    r = rank_summary(sim, pos)
    assert r["text_retrieval_median_rank"] == 1 and r["image_retrieval_mean_rank"] == pytest.approx(9 / 5)
    recall = retrieval_recall(sim, pos, (1, 2))
    ranks = best_positive_ranks(sim, pos)
    assert recall["text_retrieval_recall@2"] == pytest.approx(float((ranks <= 2).float().mean()))


def test_retrieval_rejects_queries_without_positives() -> None:
    pos = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="no positive"):
        retrieval_recall(torch.zeros(2, 2), pos)


def _brute_topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    hits = 0
    for s, y in zip(scores, labels):
        higher_or_tied = sum(1 for j, v in enumerate(s) if j != y and v >= s[y])
        hits += higher_or_tied < k
    return hits / len(labels)


small_scores = st.integers(2, 7).flatmap(lambda c: st.tuples(
    st.lists(st.lists(st.integers(0, 4), min_size=c, max_size=c), min_size=1, max_size=12),
    st.just(c)))


@settings(max_examples=60, deadline=None)
@given(small_scores, st.data())
def test_topk_matches_brute_force(sc: tuple[list[list[int]], int], data: st.DataObject) -> None:
    rows, c = sc
    labels = np.array(data.draw(st.lists(st.integers(0, c - 1), min_size=len(rows), max_size=len(rows))))
    scores = np.array(rows, dtype=float)
    acc = topk_accuracy(scores, labels, (1, 2, 3))
    for k in (1, 2, 3):
        if k <= c:
            assert acc[k] == pytest.approx(_brute_topk(scores, labels, k))
        else:
            assert math.isnan(acc[k])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 10), st.data())
def test_retrieval_properties(n_img: int, n_txt: int, data: st.DataObject) -> None:
    owner = data.draw(st.lists(st.integers(0, n_img - 1), min_size=n_txt, max_size=n_txt))
    owner = list(range(n_img)) + owner  # every image gets at least one caption
    seed = data.draw(st.integers(0, 2**32 - 1))
    # few distinct values, so ties between positives and negatives are common
    sim = torch.from_numpy(np.random.default_rng(seed).integers(0, 4, size=(n_img, len(owner))) / 4.0)
    pos = positives_from_index(owner, n_img)
    ks = sorted({1, 2, 5, len(owner)})
    r = retrieval_recall(sim, pos, ks)
    for d in ("image", "text"):
        vals = [r[f"{d}_retrieval_recall@{k}"] for k in ks]
        assert all(0.0 <= v <= 1.0 for v in vals)
        assert vals == sorted(vals)  # monotone in K
    assert r[f"text_retrieval_recall@{len(owner)}"] == 1.0  # every text in the list
    # relabelling images and texts together changes nothing
    pi, pt = torch.randperm(n_img), torch.randperm(len(owner))
    r2 = retrieval_recall(sim[pi][:, pt], pos[pi][:, pt], ks)
    assert r2 == pytest.approx(r)
    # a perfect similarity (positives score 1, negatives 0) retrieves everything at K=1
    perfect = retrieval_recall(pos.float(), pos, (1,))
    assert perfect["text_retrieval_recall@1"] == 1.0 and perfect["image_retrieval_recall@1"] == 1.0
