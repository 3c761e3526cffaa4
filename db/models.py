"""SQLAlchemy 2 typed models. The schema is created only by Alembic migrations."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time with its zone: SQLite hands times back without it (they are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite, where only that is an auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class JobState(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


class ItemStatus(enum.StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ChunkState(enum.StrEnum):
    pending = "pending"  # waiting for a worker (or for `available_at`, after an engine failure)
    running = "running"  # claimed: `owner` holds it while its lease is live
    done = "done"
    cancelled = "cancelled"


class CalibrationStatus(enum.StrEnum):
    fitting = "fitting"
    ready = "ready"
    failed = "failed"


class Classifier(Base):
    """An immutable version of a classifier spec."""

    __tablename__ = "classifiers"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_classifiers_name_version"),
        UniqueConstraint("name", "spec_hash", name="uq_classifiers_name_spec_hash"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id"), index=True)
    model: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued, index=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunk_size: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    calibration_id: Mapped[int | None] = mapped_column(
        ForeignKey("calibrations.id", name="fk_jobs_calibration_id")
    )
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class JobItem(Base):
    """One input of a job, its status, and its result or error."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "idx", name="uq_items_job_idx"),
        Index("ix_items_job_status", "job_id", "status"),
        Index("ix_items_job_custom_id", "job_id", "custom_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)  # position in the input, 0-based
    line: Mapped[int | None] = mapped_column(Integer)  # line in an uploaded JSONL file
    custom_id: Mapped[str | None] = mapped_column(String(512))
    input: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.pending)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_field: Mapped[str | None] = mapped_column(String(200))
    gold_label: Mapped[str | None] = mapped_column(String(200))
    calibration_id: Mapped[int | None] = mapped_column(BigId)


class Chunk(Base):
    """A slice of a job's items scored by one task; its state makes completion counting atomic."""

    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_chunks_job_seq"),
        Index("ix_chunks_state", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    start_idx: Mapped[int] = mapped_column(Integer)
    end_idx: Mapped[int] = mapped_column(Integer)  # exclusive
    state: Mapped[str] = mapped_column(String(16), default=ChunkState.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The lease: the worker that claimed the chunk renews it while it scores; once it expires
    # the chunk may be claimed again (its worker died). The database, not the broker, decides.
    owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    # When a task for it was last sent (None: it needs one); not before `available_at`.
    dispatched_at: Mapped[datetime | None]
    available_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class Calibration(Base):
    """A fitted calibration of one classifier version; versioned, never overwritten."""

    __tablename__ = "calibrations"
    __table_args__ = (Index("ix_calibrations_classifier_active", "classifier_id", "active"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    classifier_id: Mapped[int] = mapped_column(ForeignKey("classifiers.id"))
    method: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=CalibrationStatus.ready)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    fitted_on: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Worker(Base):
    """A worker process serving one model queue, seen through its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = [
    "ApiKey",
    "Base",
    "Calibration",
    "CalibrationStatus",
    "Chunk",
    "ChunkState",
    "Classifier",
    "ItemStatus",
    "Job",
    "JobItem",
    "JobState",
    "Worker",
]
