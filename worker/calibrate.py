"""Applying a classifier's active calibration when the worker writes results."""

from __future__ import annotations

from sqlalchemy.orm import Session

from labelq.scoring import ScoredItem
from labelq.spec import ClassifierSpec


def apply_active_calibration(
    session: Session, spec: ClassifierSpec, calibration_id: int | None, scored: list[ScoredItem]
) -> tuple[list[ScoredItem], int | None]:
    """No calibration is stored yet: results pass through unchanged."""
    return scored, None
