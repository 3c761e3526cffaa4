"""Accuracy without labels, and whether the estimate can be believed.

Confidence-based performance estimation (NannyML's CBPE, for the top label): when confidences
are calibrated, an item predicted with confidence c is right with probability c, so the expected
accuracy of a set of predictions is their mean confidence, and the accuracy actually realised
varies around it with variance sum c(1 - c) / n^2 (a Poisson-binomial). Two things can make it
wrong, and the interval and the validity signal carry one each:

- the calibration is itself off on its own data: its held-out gap between accuracy and mean
  confidence, plus that gap's own sampling error, widens the interval (or, for a calibration
  fitted before the gap was recorded, its held-out ECE, which bounds the gap);
- the traffic has moved away from the data the calibration was fitted on, where "calibrated"
  was checked: the population stability index (PSI) of the confidence histogram and of the
  predicted-label shares against the calibration set's says how far. Above 0.1 is a moderate
  shift, above 0.25 a large one (the usual reading of PSI); with a large shift the estimate is
  flagged as not to be relied on, whatever its interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy.stats import norm

from labelq.metrics import bin_ids

MODERATE_PSI = 0.1
LARGE_PSI = 0.25
CONFIDENCE_BINS = 20  # equal-width bins of the confidence histogram PSI is read on
PSI_FLOOR = 1e-4  # an empty bin's share, so the log stays finite


class Sums(BaseModel):
    """What the estimate needs of a set of scored items (SQL or Python computes the same)."""

    n: int = 0
    conf_sum: float = 0.0
    conf_sq_sum: float = 0.0
    labelled: int = 0
    labelled_conf_sum: float = 0.0
    correct: int = 0


class Estimate(BaseModel):
    n: int
    accuracy: float | None = Field(description="Expected accuracy: the mean confidence.")
    low: float | None
    high: float | None
    level: float
    sampling_sd: float | None = Field(
        description="Standard deviation of the realised accuracy around the estimate, if the "
        "confidences are calibrated: sqrt(sum c(1 - c)) / n."
    )
    calibration_allowance: float | None = Field(
        description="How far the calibration may be off on its own held-out data (added to "
        "each side of the interval); None when no calibration is relied on."
    )


def allowance(after: Mapping[str, Any] | None, level: float = 0.95) -> float | None:
    """How far mean confidence may sit from accuracy under this calibration, from its held-out
    report (`FitReport.after`): |accuracy - mean confidence| plus that gap's sampling error at
    `level`; a report without the mean confidence gives its ECE (which bounds the gap)."""
    if not after or not after.get("n"):
        return None
    n, accuracy = int(after["n"]), float(after["accuracy"])
    mean_confidence = after.get("mean_confidence")
    if mean_confidence is None:
        return float(after["ece"])
    z = float(norm.ppf(0.5 + level / 2))
    return abs(accuracy - float(mean_confidence)) + z * math.sqrt(
        max(accuracy * (1 - accuracy), 1e-12) / n
    )


def estimate(sums: Sums, allowance: float | None, level: float = 0.95) -> Estimate:
    """The expected accuracy of `sums`' items and its interval at `level`: the sampling part
    (Poisson-binomial) and the calibration's allowance, side by side."""
    if not sums.n:
        return Estimate(
            n=0,
            accuracy=None,
            low=None,
            high=None,
            level=level,
            sampling_sd=None,
            calibration_allowance=allowance,
        )
    mean = sums.conf_sum / sums.n
    variance = max(sums.conf_sum - sums.conf_sq_sum, 0.0)  # sum c(1 - c)
    sd = math.sqrt(variance) / sums.n
    half = float(norm.ppf(0.5 + level / 2)) * sd + (allowance or 0.0)
    return Estimate(
        n=sums.n,
        accuracy=mean,
        low=max(0.0, mean - half),
        high=min(1.0, mean + half),
        level=level,
        sampling_sd=sd,
        calibration_allowance=allowance,
    )


def psi(reference: Sequence[float], current: Sequence[float]) -> float | None:
    """Population stability index of two histograms over the same bins (counts or shares):
    sum (p - q) log(p / q), empty bins floored; None when either is empty."""
    ref_total, cur_total = sum(reference), sum(current)
    if not ref_total or not cur_total:
        return None
    out = 0.0
    for r, c in zip(reference, current, strict=True):
        p, q = max(c / cur_total, PSI_FLOOR), max(r / ref_total, PSI_FLOOR)
        out += (p - q) * math.log(p / q)
    return out


Shift = Literal["none", "moderate", "large", "unknown"]


class Validity(BaseModel):
    """How far this traffic is from the calibration set, where "calibrated" was checked."""

    reference: str | None = Field(description="What the traffic is compared with.")
    confidence_psi: float | None
    label_psi: float | None
    mean_confidence_shift: float | None = Field(
        description="Mean confidence here minus on the calibration set."
    )
    shift: Shift
    reliable: bool = Field(description="False when the estimate should not be relied on.")
    reasons: list[str]


def shift_of(value: float | None) -> Shift:
    if value is None:
        return "unknown"
    return "large" if value > LARGE_PSI else "moderate" if value > MODERATE_PSI else "none"


def validity(
    reference: tuple[Sequence[float], Mapping[str, float], float] | None,
    current: tuple[Sequence[float], Mapping[str, float], float],
    *,
    calibrated: bool,
    reference_name: str | None,
) -> Validity:
    """Compare the confidence histograms, predicted-label counts and mean confidences of the
    traffic (`current`) and the calibration set (`reference`)."""
    reasons = []
    if not calibrated:
        reasons.append(
            "no calibration is relied on: the estimate assumes the raw confidences are "
            "calibrated, which language models' rarely are"
        )
    if reference is None:
        reasons.append("the calibration set's items are not at hand to compare with")
        return Validity(
            reference=reference_name,
            confidence_psi=None,
            label_psi=None,
            mean_confidence_shift=None,
            shift="unknown",
            reliable=False,
            reasons=reasons,
        )
    ref_hist, ref_labels, ref_mean = reference
    hist, labels, mean = current
    names = sorted(set(ref_labels) | set(labels))
    confidence_psi = psi(ref_hist, hist)
    label_psi = psi([ref_labels.get(k, 0) for k in names], [labels.get(k, 0) for k in names])
    worst = max((v for v in (confidence_psi, label_psi) if v is not None), default=None)
    shift = shift_of(worst)
    for name, value in (("confidence", confidence_psi), ("predicted-label", label_psi)):
        if value is not None and value > MODERATE_PSI:
            kind = "large" if value > LARGE_PSI else "moderate"
            reasons.append(f"the {name} distribution moved ({kind}: PSI {value:.3f})")
    return Validity(
        reference=reference_name,
        confidence_psi=confidence_psi,
        label_psi=label_psi,
        mean_confidence_shift=mean - ref_mean,
        shift=shift,
        reliable=calibrated and shift in ("none", "moderate"),
        reasons=reasons,
    )


def reference(calibrator: Any, z: Any, labels: Sequence[str]) -> dict[str, Any] | None:
    """What a calibration's own data looks like under it, for `validity` later: the
    confidence histogram (`CONFIDENCE_BINS` equal-width bins, as the dashboard bins), the
    predicted-label counts and the mean confidence of `z` (its items' label log-probabilities)
    calibrated by `calibrator`. None when there is nothing to describe."""
    if not len(z):
        return None
    try:
        probs = np.asarray(calibrator.apply(z))
    except Exception:  # a method that cannot apply to these scores alone: no reference
        return None
    conf = probs.max(axis=1)
    counts = np.bincount(bin_ids(conf, CONFIDENCE_BINS, "width"), minlength=CONFIDENCE_BINS)
    predicted = np.bincount(probs.argmax(axis=1), minlength=len(labels))
    return {
        "n": len(conf),
        "confidence": [int(n) for n in counts],
        "labels": {label: int(predicted[k]) for k, label in enumerate(labels)},
        "mean_confidence": float(conf.mean()),
    }
