"""Calibration and selective-prediction metrics, vectorised over numpy arrays.

Conventions (users compare numbers across tools, so these are exact):
- `probs` is (n, K), rows summing to 1; `y` is (n,) gold label indices.
- confidence is the top label's probability; a prediction is its argmax.
- ECE = sum over bins of (bin count / n) * |accuracy - mean confidence|, 15 bins by default.
  Equal-width bins are (i/B, (i+1)/B], the first closed at 0; equal-mass bins hold n/B items each
  by sorted confidence (`np.array_split` of the stable ascending order).
- Brier = mean over items of sum over labels of (p_label - 1[label is gold])^2.
- NLL = mean of -ln p_gold (p_gold floored at the smallest positive float, so it stays finite).
- AURC = mean over k = 1..n of the error rate among the k most confident items (stable order).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

Array = NDArray[np.float64]
IntArray = NDArray[np.int64]
Binning = Literal["width", "mass"]


def _check(probs: Array, y: IntArray) -> tuple[Array, IntArray]:
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or y.shape != (probs.shape[0],):
        raise ValueError(f"probs must be (n, K) and y (n,); got {probs.shape} and {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= probs.shape[1]):
        raise ValueError("y holds a label index outside 0..K-1")
    return probs, y


def confidence_and_correct(probs: Array, y: IntArray) -> tuple[Array, Array]:
    probs, y = _check(probs, y)
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)


def bin_ids(confidence: Array, bins: int, binning: Binning = "width") -> IntArray:
    """The bin of each item: equal-width (i/B, (i+1)/B] with 0 in the first, or equal-mass."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if binning == "width":
        return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    order = np.argsort(confidence, kind="stable")
    ids = np.empty(len(confidence), dtype=np.int64)
    for b, members in enumerate(np.array_split(order, bins)):
        ids[members] = b
    return ids


class ReliabilityBin(BaseModel):
    bin: int
    lower: float
    upper: float
    count: int
    confidence: float | None
    accuracy: float | None


def reliability_bins(
    probs: Array, y: IntArray, bins: int = 15, binning: Binning = "width"
) -> list[ReliabilityBin]:
    """Per bin: count, mean confidence and accuracy (None for an empty bin), and its edges."""
    conf, correct = confidence_and_correct(probs, y)
    ids = bin_ids(conf, bins, binning)
    counts = np.bincount(ids, minlength=bins)
    conf_sum = np.bincount(ids, weights=conf, minlength=bins)
    acc_sum = np.bincount(ids, weights=correct, minlength=bins)
    out = []
    for b in range(bins):
        if binning == "width":
            lower, upper = b / bins, (b + 1) / bins
        else:
            members = conf[ids == b]
            lower = float(members.min()) if len(members) else float("nan")
            upper = float(members.max()) if len(members) else float("nan")
        n_b = int(counts[b])
        out.append(
            ReliabilityBin(
                bin=b,
                lower=lower,
                upper=upper,
                count=n_b,
                confidence=float(conf_sum[b] / n_b) if n_b else None,
                accuracy=float(acc_sum[b] / n_b) if n_b else None,
            )
        )
    return out


def _gaps(conf: Array, correct: Array, bins: int, binning: Binning) -> tuple[Array, Array]:
    ids = bin_ids(conf, bins, binning)
    counts = np.bincount(ids, minlength=bins).astype(np.float64)
    conf_sum = np.bincount(ids, weights=conf, minlength=bins)
    acc_sum = np.bincount(ids, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        gaps = np.abs(acc_sum - conf_sum) / counts
    return np.nan_to_num(gaps), counts


def ece(probs: Array, y: IntArray, bins: int = 15, binning: Binning = "width") -> float:
    conf, correct = confidence_and_correct(probs, y)
    gaps, counts = _gaps(conf, correct, bins, binning)
    return float((counts / len(conf) * gaps).sum())


def mce(probs: Array, y: IntArray, bins: int = 15, binning: Binning = "width") -> float:
    """The largest |accuracy - confidence| over non-empty bins."""
    conf, correct = confidence_and_correct(probs, y)
    gaps, counts = _gaps(conf, correct, bins, binning)
    return float(gaps[counts > 0].max())


def classwise_ece(probs: Array, y: IntArray, bins: int = 15) -> float:
    """Mean over labels k of the equal-width ECE of p_k against 1[y == k] (Kull et al., 2019)."""
    probs, y = _check(probs, y)
    n, k = probs.shape
    total = 0.0
    for label in range(k):
        p = probs[:, label]
        hit = (y == label).astype(np.float64)
        gaps, counts = _gaps(p, hit, bins, "width")
        total += float((counts / n * gaps).sum())
    return float(total / k)


def brier(probs: Array, y: IntArray) -> float:
    probs, y = _check(probs, y)
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll(probs: Array, y: IntArray) -> float:
    probs, y = _check(probs, y)
    p_gold = np.maximum(probs[np.arange(len(y)), y], np.finfo(np.float64).tiny)
    return float(-np.log(p_gold).mean())


def accuracy(probs: Array, y: IntArray) -> float:
    _, correct = confidence_and_correct(probs, y)
    return float(correct.mean())


def auroc(probs: Array, y: IntArray) -> float:
    """AUROC of confidence as a detector of correct predictions; nan if all right or all wrong."""
    from sklearn.metrics import roc_auc_score

    conf, correct = confidence_and_correct(probs, y)
    if correct.min() == correct.max():
        return float("nan")
    return float(roc_auc_score(correct, conf))


def risk_coverage(probs: Array, y: IntArray) -> tuple[Array, Array]:
    """(coverage k/n, error rate among the k most confident) for k = 1..n."""
    conf, correct = confidence_and_correct(probs, y)
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(1.0 - correct[order])
    k = np.arange(1, len(conf) + 1, dtype=np.float64)
    return k / len(conf), errors / k


def aurc(probs: Array, y: IntArray) -> float:
    return float(risk_coverage(probs, y)[1].mean())


def set_coverage(sets: NDArray[np.bool_], y: IntArray) -> float:
    """Share of items whose gold label is in their prediction set."""
    return float(np.asarray(sets)[np.arange(len(y)), y].mean())


def mean_set_size(sets: NDArray[np.bool_]) -> float:
    return float(np.asarray(sets).sum(axis=1).mean())


class MetricReport(BaseModel):
    n: int
    accuracy: float
    ece: float
    ece_equal_mass: float
    mce: float
    classwise_ece: float
    brier: float
    nll: float
    auroc: float | None
    aurc: float
    bins: int
    # Top-label mean confidence: its gap to `accuracy` is the calibration-in-the-large error
    # the label-free estimate allows for (`labelq.estimation.allowance`). None in reports made
    # before it was recorded.
    mean_confidence: float | None = None


def report(probs: Array, y: IntArray, bins: int = 15) -> MetricReport:
    """Every scalar metric at once. `labelq calibrate eval --json` prints a subset of these
    keys (`labelq.evaluate.EVAL_KEYS`); the API's metrics endpoints return them all."""
    au = auroc(probs, y)
    return MetricReport(
        n=len(y),
        accuracy=accuracy(probs, y),
        ece=ece(probs, y, bins),
        ece_equal_mass=ece(probs, y, bins, "mass"),
        mce=mce(probs, y, bins),
        classwise_ece=classwise_ece(probs, y, bins),
        brier=brier(probs, y),
        nll=nll(probs, y),
        auroc=None if np.isnan(au) else au,
        aurc=aurc(probs, y),
        bins=bins,
        mean_confidence=float(confidence_and_correct(probs, y)[0].mean()) if len(y) else None,
    )
