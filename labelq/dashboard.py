"""The dashboard's metrics over many stored results, from per-group sums.

Every dashboard query is computed in two steps: sums per group (a bin, a time bucket, a label
pair), then metrics from the sums. The sums come from SQL when the stored readings are the ones
asked for, or from `Readings` arrays filled in one streamed pass when results must be
recomputed under another calibration; both give the same rows, so one `finish_*` function turns
either into the answer. Definitions are those of `labelq.metrics` (equal-width bins
(i/B, (i+1)/B] with the first closed at 0; equal-mass bins by stable ascending confidence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel

from labelq.estimation import CONFIDENCE_BINS, Sums, estimate
from labelq.metrics import Binning, bin_ids

Bucket = Literal["hour", "day"]
GRID = 1000  # the risk-coverage target threshold is searched on multiples of 1/GRID
PSI_FLOOR = 1e-4  # shares below this count as this in the population stability index


# -- what each scored item stores as columns -----------------------------------------------------
def score_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The predicted label and its confidence."""
    return {"predicted": result.get("label"), "confidence": result.get("confidence")}


def gold_columns(result: dict[str, Any] | None, gold: str | None) -> dict[str, Any]:
    """Whether the prediction is right and the item's Brier score, sum over labels k of
    (p_k - 1[k = gold])^2; both None until the item has a result and a gold label."""
    if not result or gold is None:
        return {"correct": None, "brier": None}
    probs = result.get("probs") or {}
    brier = sum((p - (label == gold)) ** 2 for label, p in probs.items()) if probs else None
    return {"correct": result.get("label") == gold, "brier": brier}


# -- per-item readings, for the streamed pass ----------------------------------------------------
@dataclass
class Readings:
    """Scored items as columns (in id order): what SQL reads, built in Python instead."""

    ids: list[int] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    gold: list[str | None] = field(default_factory=list)
    correct: list[bool | None] = field(default_factory=list)
    brier: list[float | None] = field(default_factory=list)
    scored_at: list[datetime] = field(default_factory=list)

    def add(
        self, item_id: int, result: dict[str, Any], gold: str | None, scored_at: datetime
    ) -> None:
        scored, judged = score_columns(result), gold_columns(result, gold)
        self.ids.append(item_id)
        self.predicted.append(scored["predicted"])
        self.confidence.append(scored["confidence"])
        self.gold.append(gold)
        self.correct.append(judged["correct"])
        self.brier.append(judged["brier"])
        self.scored_at.append(scored_at)

    def in_id_order(self) -> Readings:
        """Items in id order, as SQL orders ties (equal-mass bins depend on it)."""
        return self._take(sorted(range(len(self.ids)), key=self.ids.__getitem__))

    def within(self, start: datetime | None, end: datetime | None) -> Readings:
        """The items scored in [start, end)."""
        return self._take(
            [
                k
                for k, t in enumerate(self.scored_at)
                if (start is None or t >= start) and (end is None or t < end)
            ]
        )

    def _take(self, keep: list[int]) -> Readings:
        return Readings(
            [self.ids[k] for k in keep],
            [self.predicted[k] for k in keep],
            [self.confidence[k] for k in keep],
            [self.gold[k] for k in keep],
            [self.correct[k] for k in keep],
            [self.brier[k] for k in keep],
            [self.scored_at[k] for k in keep],
        )

    def arrays(self) -> _Arrays:
        conf = np.asarray(self.confidence, dtype=np.float64)
        labelled = np.array([c is not None for c in self.correct], dtype=bool)
        correct = np.array([bool(c) for c in self.correct], dtype=bool)
        brier = np.array([b if b is not None else 0.0 for b in self.brier], dtype=np.float64)
        return _Arrays(conf, labelled, correct, brier)


class _Arrays(NamedTuple):
    conf: NDArray[np.float64]
    labelled: NDArray[np.bool_]
    correct: NDArray[np.bool_]
    brier: NDArray[np.float64]


# -- sums rows (SQL returns the same) ------------------------------------------------------------
class BinSums(NamedTuple):
    bin: int
    n: int
    conf_sum: float
    correct: int
    brier_sum: float
    conf_min: float
    conf_max: float


class HistogramSums(NamedTuple):
    bin: int
    correct: int
    incorrect: int
    unlabelled: int


class BucketBinSums(NamedTuple):
    bucket: datetime
    bin: int
    n: int
    conf_sum: float
    labelled: int
    labelled_conf_sum: float
    correct: int
    brier_sum: float


class PairCount(NamedTuple):
    gold: str
    predicted: str
    n: int


class BucketLabelCount(NamedTuple):
    bucket: datetime | None
    predicted: str
    n: int


class ThresholdSums(NamedTuple):
    threshold: float
    n: int
    correct: int


class EstimateInputs(NamedTuple):
    """What the label-free estimate reads of a scope (`db.dashboard.estimate_sums` in SQL)."""

    sums: Sums
    histogram: list[HistogramSums]
    labels: list[BucketLabelCount]

    def confidence_counts(self, bins: int = CONFIDENCE_BINS) -> list[float]:
        counts = [0.0] * bins
        for row in self.histogram:
            counts[row.bin] += row.correct + row.incorrect + row.unlabelled
        return counts

    def label_counts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for row in self.labels:
            out[row.predicted] = out.get(row.predicted, 0) + row.n
        return out

    def mean_confidence(self) -> float:
        return self.sums.conf_sum / self.sums.n if self.sums.n else 0.0


def estimate_sums(r: Readings) -> EstimateInputs:
    a = r.arrays()
    sums = Sums(
        n=len(a.conf),
        conf_sum=float(a.conf.sum()),
        conf_sq_sum=float((a.conf**2).sum()),
        labelled=int(a.labelled.sum()),
        labelled_conf_sum=float(a.conf[a.labelled].sum()),
        correct=int(a.correct.sum()),
    )
    return EstimateInputs(sums, histogram_sums(r, CONFIDENCE_BINS), label_counts(r, None))


def reliability_sums(r: Readings, bins: int, binning: Binning) -> list[BinSums]:
    a = r.arrays()
    keep = a.labelled
    conf, correct, brier = a.conf[keep], a.correct[keep], a.brier[keep]
    ids = bin_ids(conf, bins, binning)
    out = []
    for b in np.unique(ids):
        m = ids == b
        out.append(
            BinSums(
                int(b),
                int(m.sum()),
                float(conf[m].sum()),
                int(correct[m].sum()),
                float(brier[m].sum()),
                float(conf[m].min()),
                float(conf[m].max()),
            )
        )
    return out


def histogram_sums(r: Readings, bins: int) -> list[HistogramSums]:
    a = r.arrays()
    ids = bin_ids(a.conf, bins, "width")
    out = []
    for b in np.unique(ids):
        m = ids == b
        right = int((m & a.correct).sum())
        labelled = int((m & a.labelled).sum())
        out.append(HistogramSums(int(b), right, labelled - right, int(m.sum()) - labelled))
    return out


def truncate(t: datetime, bucket: Bucket) -> datetime:
    """The start of `t`'s hour or day, in UTC."""
    t = t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if bucket == "day" else t


def bucket_bin_sums(r: Readings, bins: int, bucket: Bucket) -> list[BucketBinSums]:
    a = r.arrays()
    ids = bin_ids(a.conf, bins, "width")
    groups: dict[tuple[datetime, int], list[int]] = {}
    buckets = [truncate(t, bucket) for t in r.scored_at]
    for k, key in enumerate(zip(buckets, ids.tolist(), strict=True)):
        groups.setdefault(key, []).append(k)
    out = []
    for (start, b), members in sorted(groups.items()):
        idx = np.array(members)
        lab = a.labelled[idx]
        out.append(
            BucketBinSums(
                start,
                b,
                len(idx),
                float(a.conf[idx].sum()),
                int(lab.sum()),
                float(a.conf[idx][lab].sum()),
                int(a.correct[idx].sum()),
                float(a.brier[idx].sum()),
            )
        )
    return out


def pair_counts(r: Readings) -> list[PairCount]:
    counts: dict[tuple[str, str], int] = {}
    for gold, predicted in zip(r.gold, r.predicted, strict=True):
        if gold is not None:
            counts[gold, predicted] = counts.get((gold, predicted), 0) + 1
    return [PairCount(g, p, n) for (g, p), n in sorted(counts.items())]


def label_counts(r: Readings, bucket: Bucket | None) -> list[BucketLabelCount]:
    """Predicted labels counted per time bucket (None: over all of `r`)."""
    counts: dict[tuple[datetime | None, str], int] = {}
    for t, predicted in zip(r.scored_at, r.predicted, strict=True):
        key = (truncate(t, bucket) if bucket else None, predicted)
        counts[key] = counts.get(key, 0) + 1
    return [BucketLabelCount(b, p, n) for (b, p), n in counts.items()]


def threshold_sums(r: Readings, thresholds: Sequence[float]) -> list[ThresholdSums]:
    a = r.arrays()
    conf, correct = a.conf[a.labelled], a.correct[a.labelled]
    return [
        ThresholdSums(t, int((conf >= t).sum()), int(correct[conf >= t].sum())) for t in thresholds
    ]


def grid_sums(r: Readings) -> list[ThresholdSums]:
    """Counts per grid cell floor(confidence * GRID), as thresholds i / GRID."""
    a = r.arrays()
    conf, correct = a.conf[a.labelled], a.correct[a.labelled]
    cells = np.minimum(np.floor(conf * GRID).astype(np.int64), GRID)
    return [
        ThresholdSums(int(c) / GRID, int((cells == c).sum()), int(correct[cells == c].sum()))
        for c in np.unique(cells)
    ]


# -- answers -------------------------------------------------------------------------------------
class BinOut(BaseModel):
    bin: int
    lower: float | None
    upper: float | None
    count: int
    accuracy: float | None
    confidence: float | None


class Summary(BaseModel):
    n: int
    accuracy: float | None
    ece: float | None
    mce: float | None
    brier: float | None
    mean_confidence: float | None


class ReliabilityOut(Summary):
    bins: list[BinOut]
    binning: Binning


def finish_reliability(rows: Sequence[BinSums], bins: int, binning: Binning) -> ReliabilityOut:
    by_bin = {r.bin: r for r in rows}
    n = sum(r.n for r in rows)
    out_bins, gaps = [], []
    for b in range(bins):
        r = by_bin.get(b)
        lower: float | None = b / bins if binning == "width" else (r.conf_min if r else None)
        upper: float | None = (b + 1) / bins if binning == "width" else (r.conf_max if r else None)
        if r is None or r.n == 0:
            out_bins.append(
                BinOut(bin=b, lower=lower, upper=upper, count=0, accuracy=None, confidence=None)
            )
            continue
        acc, conf = r.correct / r.n, r.conf_sum / r.n
        gaps.append((r.n, abs(acc - conf)))
        out_bins.append(
            BinOut(bin=b, lower=lower, upper=upper, count=r.n, accuracy=acc, confidence=conf)
        )
    return ReliabilityOut(
        n=n,
        accuracy=sum(r.correct for r in rows) / n if n else None,
        ece=sum(c * g for c, g in gaps) / n if n else None,
        mce=max(g for _, g in gaps) if gaps else None,
        brier=sum(r.brier_sum for r in rows) / n if n else None,
        mean_confidence=sum(r.conf_sum for r in rows) / n if n else None,
        bins=out_bins,
        binning=binning,
    )


class HistogramBin(BaseModel):
    bin: int
    lower: float
    upper: float
    correct: int
    incorrect: int
    unlabelled: int


def finish_histogram(rows: Sequence[HistogramSums], bins: int) -> list[HistogramBin]:
    by_bin = {r.bin: r for r in rows}
    out = []
    for b in range(bins):
        r = by_bin.get(b) or HistogramSums(b, 0, 0, 0)
        out.append(
            HistogramBin(
                bin=b,
                lower=b / bins,
                upper=(b + 1) / bins,
                correct=r.correct,
                incorrect=r.incorrect,
                unlabelled=r.unlabelled,
            )
        )
    return out


class TimePoint(BaseModel):
    bucket: datetime
    volume: int
    mean_confidence: float
    labelled: int
    coverage: float  # share of the bucket's scored items that carry a gold label
    accuracy: float | None
    ece: float | None
    brier: float | None
    # Accuracy without labels (`labelq.estimation`): the mean confidence, and its interval at
    # 95% (sampling, from the bins: sum n m (1 - m) bounds sum c (1 - c) from above) widened by
    # the calibration's allowance.
    estimated_accuracy: float
    estimated_low: float
    estimated_high: float


def finish_timeseries(
    rows: Sequence[BucketBinSums], allowance: float | None = None
) -> list[TimePoint]:
    buckets: dict[datetime, list[BucketBinSums]] = {}
    for r in rows:
        buckets.setdefault(r.bucket, []).append(r)
    out = []
    for bucket in sorted(buckets):
        group = buckets[bucket]
        volume = sum(r.n for r in group)
        labelled = sum(r.labelled for r in group)
        correct = sum(r.correct for r in group)
        ece = (
            sum(abs(r.correct - r.labelled_conf_sum) for r in group if r.labelled) / labelled
            if labelled
            else None
        )
        conf_sum = sum(r.conf_sum for r in group)
        bound = sum(r.conf_sum * (1 - r.conf_sum / r.n) for r in group if r.n)  # n m (1 - m)
        estimated = estimate(
            Sums(n=volume, conf_sum=conf_sum, conf_sq_sum=conf_sum - bound), allowance
        )
        assert estimated.low is not None and estimated.high is not None
        out.append(
            TimePoint(
                bucket=bucket,
                volume=volume,
                mean_confidence=conf_sum / volume,
                estimated_accuracy=conf_sum / volume,
                estimated_low=estimated.low,
                estimated_high=estimated.high,
                labelled=labelled,
                coverage=labelled / volume,
                accuracy=correct / labelled if labelled else None,
                ece=ece,
                brier=sum(r.brier_sum for r in group) / labelled if labelled else None,
            )
        )
    return out


class Confusion(BaseModel):
    labels: list[str]
    matrix: list[list[int]]  # rows: gold label, columns: predicted label, in `labels` order
    n: int


def finish_confusion(rows: Sequence[PairCount], labels: Sequence[str]) -> Confusion:
    index = {label: k for k, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for r in rows:
        if r.gold in index and r.predicted in index:
            matrix[index[r.gold]][index[r.predicted]] += r.n
    return Confusion(labels=list(labels), matrix=matrix, n=sum(map(sum, matrix)))


class Shares(BaseModel):
    bucket: datetime
    count: int
    shares: dict[str, float]
    psi: float | None
    js_divergence: float | None


class LabelDistribution(BaseModel):
    labels: list[str]
    reference: dict[str, Any]
    buckets: list[Shares]


def _shares(counts: dict[str, int], labels: Sequence[str]) -> NDArray[np.float64]:
    total = sum(counts.values())
    return np.array([counts.get(label, 0) / total if total else 0.0 for label in labels])


def psi(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Population stability index of `p` against reference `q`: sum (p - q) ln(p / q), with
    shares floored at PSI_FLOOR so a label missing on one side stays finite."""
    p, q = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    return float(((p - q) * np.log(p / q)).sum())


def js_divergence(p: NDArray[np.float64], q: NDArray[np.float64]) -> float:
    """Jensen-Shannon divergence in bits (0: the same shares, 1: disjoint)."""
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2) ** 2)


def finish_label_distribution(
    rows: Sequence[BucketLabelCount],
    reference_rows: Sequence[BucketLabelCount] | None,
    labels: Sequence[str],
    reference: dict[str, Any],
) -> LabelDistribution:
    """Shares per bucket and their drift against the reference rows (None: the first bucket)."""
    buckets: dict[datetime, dict[str, int]] = {}
    for r in rows:
        assert r.bucket is not None
        buckets.setdefault(r.bucket, {})[r.predicted] = r.n
    order = sorted(buckets)
    if reference_rows is None:
        ref_counts = buckets[order[0]] if order else {}
    else:
        ref_counts = {r.predicted: r.n for r in reference_rows}
    ref = _shares(ref_counts, labels)
    has_ref = sum(ref_counts.values()) > 0
    out = []
    for bucket in order:
        p = _shares(buckets[bucket], labels)
        out.append(
            Shares(
                bucket=bucket,
                count=sum(buckets[bucket].values()),
                shares=dict(zip(labels, p.tolist(), strict=True)),
                psi=psi(p, ref) if has_ref else None,
                js_divergence=js_divergence(p, ref) if has_ref else None,
            )
        )
    reference = {
        **reference,
        "count": sum(ref_counts.values()),
        "shares": dict(zip(labels, ref.tolist(), strict=True)),
    }
    return LabelDistribution(labels=list(labels), reference=reference, buckets=out)


class SelectivePoint(BaseModel):
    threshold: float
    count: int
    coverage: float
    accuracy: float | None


class Selective(BaseModel):
    n: int
    points: list[SelectivePoint]
    target_accuracy: float | None
    target: SelectivePoint | None  # the lowest grid threshold reaching it; None: none does


def finish_selective(
    rows: Sequence[ThresholdSums],
    grid: Sequence[ThresholdSums],
    target_accuracy: float | None,
) -> Selective:
    n = sum(g.n for g in grid)

    def point(t: float, count: int, correct: int) -> SelectivePoint:
        return SelectivePoint(
            threshold=t,
            count=count,
            coverage=count / n if n else 0.0,
            accuracy=correct / count if count else None,
        )

    target = None
    if target_accuracy is not None:
        count = correct = 0
        for g in sorted(grid, key=lambda g: -g.threshold):  # from the most confident down
            count, correct = count + g.n, correct + g.correct
            if count and correct / count >= target_accuracy:
                target = point(g.threshold, count, correct)
    return Selective(
        n=n,
        points=[point(r.threshold, r.n, r.correct) for r in rows],
        target_accuracy=target_accuracy,
        target=target,
    )
