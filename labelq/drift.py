"""Drift alarms: which of a classifier's signals crossed their thresholds over a recent window.

The signals come from the label-free estimate (`labelq.estimation`) of the window's traffic
under the active calibration: the estimated accuracy against the calibration's own held-out
accuracy (a drop), the PSI of the predicted-label shares and of the confidence histogram
against the calibration set's, the mean-confidence shift, and the estimate's validity. A
signal is raised while its value is past its threshold; alarms are sent on the way up and on
the way down, not at every check.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

SIGNALS = (
    "estimated_accuracy_drop",
    "label_psi",
    "confidence_psi",
    "mean_confidence_shift",
    "unreliable",
)


class Thresholds(BaseModel):
    """Past these a signal is raised; None turns it off."""

    estimated_accuracy_drop: float | None = Field(
        0.05, ge=0, le=1, description="held-out accuracy of the calibration minus the estimate"
    )
    label_psi: float | None = Field(0.25, ge=0, description="predicted-label shares' PSI")
    confidence_psi: float | None = Field(0.25, ge=0, description="confidence histogram's PSI")
    mean_confidence_shift: float | None = Field(
        None, ge=0, le=1, description="|mean confidence here - on the calibration set|"
    )
    unreliable: bool = Field(
        False, description="raise when the estimate is marked not to be relied on"
    )


class Signal(BaseModel):
    value: float | None
    threshold: float | None
    raised: bool


def evaluate(
    thresholds: Thresholds, estimate: dict[str, Any], held_out_accuracy: float | None
) -> dict[str, Signal]:
    """The signals of one window, from an `estimated-performance` answer (as a dict) and the
    relied-on calibration's held-out accuracy."""
    e, v = estimate["estimate"], estimate["validity"]
    drop = (
        held_out_accuracy - e["accuracy"]
        if held_out_accuracy is not None and e["accuracy"] is not None
        else None
    )
    shift = v["mean_confidence_shift"]
    values: dict[str, float | None] = {
        "estimated_accuracy_drop": drop,
        "label_psi": v["label_psi"],
        "confidence_psi": v["confidence_psi"],
        "mean_confidence_shift": None if shift is None else abs(shift),
    }
    out = {}
    for name, value in values.items():
        limit = getattr(thresholds, name)
        out[name] = Signal(
            value=value,
            threshold=limit,
            raised=limit is not None and value is not None and value > limit,
        )
    out["unreliable"] = Signal(
        value=0.0 if v["reliable"] else 1.0,
        threshold=0.5 if thresholds.unreliable else None,
        raised=thresholds.unreliable and not v["reliable"],
    )
    return out


def moved(before: dict[str, Any] | None, after: dict[str, Signal]) -> tuple[list[str], list[str]]:
    """(signals raised now that were not, signals that were raised and are not now)."""
    was = {name for name, s in ((before or {}).get("signals") or {}).items() if s.get("raised")}
    now = {name for name, s in after.items() if s.raised}
    return sorted(now - was), sorted(was - now)
