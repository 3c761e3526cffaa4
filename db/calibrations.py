"""Calibration rows: fitted parameters per classifier version, never overwritten."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.models import Calibration, CalibrationStatus, Classifier
from labelq.errors import Conflict, NotFound


def active_calibration(s: Session, classifier_id: int) -> Calibration | None:
    return s.scalar(
        select(Calibration).where(
            Calibration.classifier_id == classifier_id, Calibration.active.is_(True)
        )
    )


def get_calibration(
    s: Session, calibration_id: int, classifier_ids: Collection[int] | None = None
) -> Calibration:
    """A calibration; with `classifier_ids`, only one of those classifiers' (else NotFound)."""
    row = s.get(Calibration, calibration_id)
    if row is None or (classifier_ids is not None and row.classifier_id not in classifier_ids):
        raise NotFound(f"calibration {calibration_id} does not exist", field="calibration")
    return row


def calibration_of(
    s: Session, calibration_id: int, name: str, *, tenant: str | None
) -> tuple[Calibration, Classifier]:
    """A calibration of classifier `name` of `tenant` (None: of any tenant), with its classifier
    version; NotFound otherwise (another tenant's is as a missing one)."""
    found = s.execute(
        select(Calibration, Classifier)
        .join(Classifier, Classifier.id == Calibration.classifier_id)
        .where(Calibration.id == calibration_id)
    ).first()
    if found is None or (tenant is not None and found[1].tenant != tenant):
        raise NotFound(f"calibration {calibration_id} does not exist", field="calibration")
    if found[1].name != name:
        raise NotFound(f"calibration {calibration_id} is not of {name!r}", field="calibration")
    return found[0], found[1]


def list_calibrations(s: Session, classifier_ids: Collection[int]) -> list[Calibration]:
    return list(
        s.scalars(
            select(Calibration)
            .where(Calibration.classifier_id.in_(list(classifier_ids)))
            .order_by(Calibration.id)
        )
    )


def add_calibration(
    s: Session, classifier_id: int, method: str, fitted_on: dict[str, Any]
) -> Calibration:
    row = Calibration(
        classifier_id=classifier_id,
        method=method,
        status=CalibrationStatus.fitting,
        params={},
        fitted_on=fitted_on,
        metrics={},
        active=False,
    )
    s.add(row)
    s.flush()
    return row


def record_fit(
    s: Session,
    calibration_id: int,
    *,
    params: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    fitted_on: dict[str, Any] | None = None,
    error: str | None = None,
) -> Calibration:
    row = s.get_one(Calibration, calibration_id)
    row.status = CalibrationStatus.failed if error else CalibrationStatus.ready
    row.error = error
    if params is not None:
        row.params = params
    if metrics is not None:
        row.metrics = metrics
    if fitted_on is not None:
        row.fitted_on = {**row.fitted_on, **fitted_on}
    return row


def activate(s: Session, row: Calibration) -> Calibration:
    """Make `row` the one active calibration of its classifier version."""
    if row.status != CalibrationStatus.ready:
        raise Conflict(f"calibration {row.id} is {row.status}, not ready", field="calibration")
    s.execute(
        update(Calibration)
        .where(Calibration.classifier_id == row.classifier_id, Calibration.id != row.id)
        .values(active=False)
    )
    row.active = True
    return row
