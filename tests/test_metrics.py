"""Metrics: each vectorised metric against a slow, literal reference, and against netcal and
scikit-learn where they have the metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labelq import metrics

RNG = np.random.default_rng(7)


def random_case(n: int = 997, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    logits = RNG.normal(0, 2, size=(n, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([RNG.choice(k, p=p) for p in probs])
    return probs, y


# -- slow references: loops over items, written from the definitions -----------------------------
def ref_bins_width(conf: list[float], bins: int) -> list[list[int]]:
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(conf):
        for b in range(bins):
            lo, hi = b / bins, (b + 1) / bins
            if (lo < c <= hi) or (b == 0 and c == 0):
                members[b].append(i)
                break
    return members


def ref_bins_mass(conf: list[float], bins: int) -> list[list[int]]:
    order = sorted(range(len(conf)), key=lambda i: conf[i])
    n = len(conf)
    sizes = [n // bins + (1 if b < n % bins else 0) for b in range(bins)]
    out, start = [], 0
    for size in sizes:
        out.append(order[start : start + size])
        start += size
    return out


def ref_ece(
    probs: np.ndarray, y: np.ndarray, bins: int, mass: bool = False, worst: bool = False
) -> float:
    conf = [max(row) for row in probs.tolist()]
    pred = [row.index(max(row)) for row in probs.tolist()]
    groups = ref_bins_mass(conf, bins) if mass else ref_bins_width(conf, bins)
    total, gaps = 0.0, []
    for g in groups:
        if not g:
            continue
        acc = sum(pred[i] == y[i] for i in g) / len(g)
        mean_conf = sum(conf[i] for i in g) / len(g)
        gaps.append(abs(acc - mean_conf))
        total += len(g) / len(conf) * abs(acc - mean_conf)
    return max(gaps) if worst else total


def ref_classwise(probs: np.ndarray, y: np.ndarray, bins: int) -> float:
    k = probs.shape[1]
    total = 0.0
    for label in range(k):
        p = probs[:, label].tolist()
        groups = ref_bins_width(p, bins)
        for g in groups:
            if g:
                freq = sum(y[i] == label for i in g) / len(g)
                total += len(g) / len(p) * abs(freq - sum(p[i] for i in g) / len(g))
    return total / k


def ref_aurc(probs: np.ndarray, y: np.ndarray) -> float:
    conf = probs.max(axis=1).tolist()
    correct = (probs.argmax(axis=1) == y).tolist()
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    risks = []
    for k in range(1, len(order) + 1):
        top = order[:k]
        risks.append(sum(not correct[i] for i in top) / k)
    return sum(risks) / len(risks)


def ref_auroc(probs: np.ndarray, y: np.ndarray) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    pos, neg = conf[correct], conf[~correct]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return float(wins / (len(pos) * len(neg)))


@pytest.mark.parametrize("bins", [1, 10, 15, 37])
def test_ece_mce_against_reference(bins: int) -> None:
    probs, y = random_case()
    assert metrics.ece(probs, y, bins) == pytest.approx(ref_ece(probs, y, bins), abs=1e-12)
    assert metrics.ece(probs, y, bins, "mass") == pytest.approx(
        ref_ece(probs, y, bins, mass=True), abs=1e-12
    )
    assert metrics.mce(probs, y, bins) == pytest.approx(
        ref_ece(probs, y, bins, worst=True), abs=1e-12
    )
    assert metrics.classwise_ece(probs, y, bins) == pytest.approx(
        ref_classwise(probs, y, bins), abs=1e-12
    )


def test_bin_edges_are_right_closed_and_zero_goes_first() -> None:
    conf = np.array([0.0, 0.1, 0.1000001, 0.2, 1.0])
    assert metrics.bin_ids(conf, 10).tolist() == [0, 0, 1, 1, 9]


def test_brier_nll_accuracy_aurc_auroc_against_reference() -> None:
    probs, y = random_case(401, 3)
    brier = sum(
        sum((p - (k == g)) ** 2 for k, p in enumerate(row))
        for row, g in zip(probs, y, strict=False)
    ) / len(y)
    nll = -sum(math.log(row[g]) for row, g in zip(probs, y, strict=False)) / len(y)
    assert metrics.brier(probs, y) == pytest.approx(brier, abs=1e-12)
    assert metrics.nll(probs, y) == pytest.approx(nll, abs=1e-12)
    assert metrics.accuracy(probs, y) == pytest.approx(np.mean(probs.argmax(1) == y))
    assert metrics.aurc(probs, y) == pytest.approx(ref_aurc(probs, y), abs=1e-12)
    assert metrics.auroc(probs, y) == pytest.approx(ref_auroc(probs, y), abs=1e-12)


def test_against_netcal_and_sklearn() -> None:
    from netcal.metrics import ECE
    from sklearn.metrics import brier_score_loss, log_loss

    probs, y = random_case(2000, 4)
    assert metrics.ece(probs, y, 15) == pytest.approx(ECE(bins=15).measure(probs, y), abs=1e-9)
    assert metrics.nll(probs, y) == pytest.approx(log_loss(y, probs), abs=1e-9)
    binary, yb = random_case(2000, 2)
    # The multi-class Brier sums over both labels: twice scikit-learn's binary Brier.
    assert metrics.brier(binary, yb) == pytest.approx(
        2 * brier_score_loss(yb, binary[:, 1]), abs=1e-12
    )
    # With two labels netcal switches to binary mode and bins p(label 1), not the top label's
    # confidence: that is the class-wise ECE (both labels' terms are mirror images).
    assert metrics.classwise_ece(binary, yb, 10) == pytest.approx(
        ECE(bins=10).measure(binary, yb), abs=1e-9
    )


def test_reliability_bins_and_report() -> None:
    probs, y = random_case(500, 3)
    table = metrics.reliability_bins(probs, y, 10)
    assert sum(b.count for b in table) == 500
    filled = [b for b in table if b.count]
    assert sum(b.count * abs(b.accuracy - b.confidence) for b in filled) / 500 == pytest.approx(  # type: ignore[operator]
        metrics.ece(probs, y, 10)
    )
    assert all(b.lower < b.confidence <= b.upper for b in filled)  # type: ignore[operator]
    r = metrics.report(probs, y)
    assert r.n == 500 and r.bins == 15 and r.ece == metrics.ece(probs, y)


def test_degenerate_cases() -> None:
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1])
    assert metrics.ece(probs, y) == 0.0 and metrics.aurc(probs, y) == 0.0
    assert math.isnan(metrics.auroc(probs, y))
    assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) < 1000  # finite
    with pytest.raises(ValueError):
        metrics.ece(probs, np.array([0, 2]))
    sets = np.array([[True, False], [True, True]])
    assert metrics.set_coverage(sets, y) == 1.0 and metrics.mean_set_size(sets) == 1.5
