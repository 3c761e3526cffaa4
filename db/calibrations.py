"""Calibration rows: fitted parameters per classifier version, never overwritten."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.models import Calibration, CalibrationStatus, Classifier, as_utc
from db.session import db_now, rowcount
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
    row.lease_expires_at = None
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


# -- a fit as a task: sent, claimed under a lease, sent again when lost -------------------------
def mark_fit_sent(s: Session, calibration_id: int, when: datetime) -> None:
    s.execute(
        update(Calibration).where(Calibration.id == calibration_id).values(dispatched_at=when)
    )


def claim_fit(
    s: Session, calibration_id: int, *, lease_seconds: float, max_attempts: int
) -> Calibration | None:
    """Claim a `fitting` calibration for one attempt under a lease (the database's clock);
    None when it is fitted already, failed, or held by a live lease. Past `max_attempts` it
    fails instead ("gave up"), and None comes back."""
    now = db_now(s)
    claimed = rowcount(
        s.execute(
            update(Calibration)
            .where(
                Calibration.id == calibration_id,
                Calibration.status == CalibrationStatus.fitting,
                or_(Calibration.lease_expires_at.is_(None), Calibration.lease_expires_at < now),
            )
            .values(
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=Calibration.attempts + 1,
            )
        )
    )
    if not claimed:
        return None
    row = s.get_one(Calibration, calibration_id, populate_existing=True)
    if row.attempts > max_attempts:
        record_fit(
            s,
            calibration_id,
            error=f"gave up after {max_attempts} attempts: each fit ended without a result "
            "(its worker died or lost its lease)",
        )
        return None
    return row


def renew_fit(s: Session, calibration_id: int, lease_seconds: float) -> bool:
    """Extend a fit's lease while it is still `fitting`; False once it is not."""
    return bool(
        rowcount(
            s.execute(
                update(Calibration)
                .where(
                    Calibration.id == calibration_id,
                    Calibration.status == CalibrationStatus.fitting,
                )
                .values(lease_expires_at=db_now(s) + timedelta(seconds=lease_seconds))
            )
        )
    )


def fits_to_send(s: Session, now: datetime, stalled_before: datetime) -> list[Calibration]:
    """`fitting` calibrations under no live lease that were never sent, or sent before
    `stalled_before` (their task lost, or their worker gone): each at most once a stall
    period."""
    return list(
        s.scalars(
            select(Calibration)
            .where(
                Calibration.status == CalibrationStatus.fitting,
                or_(Calibration.lease_expires_at.is_(None), Calibration.lease_expires_at < now),
                or_(
                    Calibration.dispatched_at.is_(None),
                    Calibration.dispatched_at < stalled_before,
                ),
            )
            .order_by(Calibration.id)
        )
    )


def expire_fits(s: Session, now: datetime, created_before: datetime) -> list[int]:
    """Fail the calibrations still `fitting` that were asked for before `created_before`
    (their deadline) and are under no live lease; returns their ids."""
    rows = list(
        s.scalars(
            select(Calibration)
            .where(
                Calibration.status == CalibrationStatus.fitting,
                Calibration.created_at < created_before,
                or_(Calibration.lease_expires_at.is_(None), Calibration.lease_expires_at < now),
            )
            .with_for_update()
        )
    )
    for row in rows:
        waited = (now - as_utc(row.created_at)).total_seconds()
        row.status = CalibrationStatus.failed
        row.error = f"expired: not fitted {waited:.0f} s after it was asked for"
        row.lease_expires_at = None
    return [row.id for row in rows]
