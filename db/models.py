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
    Double,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    Row,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

DEFAULT_TENANT = "default"
# read: every GET of the tenant's things; submit: classifiers, jobs, gold labels; calibrate: fit
# and activate; pipelines: create, change and run pipelines; metrics: /metrics; admin: all of
# them and keys.
SCOPES = ("read", "submit", "calibrate", "pipelines", "metrics", "admin")


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A stored time with its zone: SQLite hands times back without it (they are UTC)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# BIGINT on PostgreSQL; INTEGER on SQLite, where only that is an auto-incrementing rowid.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A time stored in UTC and always handed back with its zone: SQLite keeps none, and a
    zone-less time served as JSON is not a valid RFC 3339 date-time."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: UTCDateTime(),
    }


class JobState(enum.StrEnum):
    """queued -> running -> succeeded (every item has a result) | partial (some items failed,
    some have results) | failed (no item has a result, or the job could not go on); cancelling
    -> cancelled; any unended state -> expired (its deadline passed)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    partial = "partial"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"
    expired = "expired"  # not ended by its deadline: what was scored stays, the rest cancelled

    @property
    def finished(self) -> bool:
        return self in ENDED_STATES


ENDED_STATES = frozenset(
    {JobState.succeeded, JobState.partial, JobState.failed, JobState.cancelled, JobState.expired}
)
# The states of a job still going, as a tuple for `IN (...)`.
UNFINISHED_STATES = (JobState.queued, JobState.running, JobState.cancelling)


class Erase(enum.StrEnum):
    """How much of a job an erasure removes, each level including the one before: `content`
    (inputs, results, custom ids, errors, metadata, webhook deliveries: the job and its items'
    numbers stay, so the dashboard and /metrics keep counting them), `items` (the item rows
    too: the job stays as a tombstone with its counts, and each scored row's numbers move to
    `items_archive`, so the dashboard's figures stay) and `job` (nothing is left)."""

    content = "content"
    items = "items"
    job = "job"

    @property
    def level(self) -> int:
        return list(Erase).index(self)


class FailureKind(enum.StrEnum):
    """Why an item failed: `input`, the item itself (a missing field, a bad line, too long: it
    fails again whenever it is sent); `engine`, the model or the worker (it may score on
    another try)."""

    input = "input"
    engine = "engine"


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
        UniqueConstraint("tenant", "name", "version", name="uq_classifiers_tenant_name_version"),
        UniqueConstraint("tenant", "name", "spec_hash", name="uq_classifiers_tenant_name_hash"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    # Never fetch the server-filled cost columns back after an INSERT (they may not exist yet).
    __mapper_args__ = {"eager_defaults": False}  # noqa: RUF012 - SQLAlchemy's declaration
    __table_args__ = (
        Index("ix_jobs_created_at", "created_at"),
        # An Idempotency-Key is the tenant's own: another tenant's use of it is not told.
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        # The erasures still to do: what each sweep looks up.
        Index(
            "ix_jobs_erase_pending",
            "erase",
            postgresql_where=text("erase IS NOT NULL AND erased_at IS NULL"),
            sqlite_where=text("erase IS NOT NULL AND erased_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, index=True)
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
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    calibration_id: Mapped[int | None] = mapped_column(
        ForeignKey("calibrations.id", name="fk_jobs_calibration_id")
    )
    error: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # While its items arrive, a job holds an upload lease; one that runs out (the process
    # receiving them died) fails the job (`db.jobs.expire_uploads`). None once sealed.
    upload_expires_at: Mapped[datetime | None]
    # Its deadline: not ended by then, it ends `expired` (`db.chunks.expire_jobs`).
    expires_at: Mapped[datetime | None]
    # An erasure asked for (an `Erase`: by DELETE, a tenant's erasure or retention), done in
    # bounded batches by the sweep once the job has ended; `erased_at` set when it is complete.
    erase: Mapped[str | None] = mapped_column(String(16))
    erased_at: Mapped[datetime | None]
    # What scoring it cost (migration 0024), added to by each chunk. This code runs on schemas
    # before 0024 too (`db.schema.Features`): deferred, so a load never names them, and
    # FetchedValue, so an INSERT leaves them out (NULL, filled by the chunks' updates).
    engine_seconds: Mapped[float | None] = mapped_column(
        Double, deferred=True, server_default=FetchedValue()
    )
    prompt_tokens: Mapped[int | None] = mapped_column(
        BigInteger, deferred=True, server_default=FetchedValue()
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


# What the dashboard's covering indexes carry besides (classifier_id, scored_at): the columns
# its queries read, and the id (the equal-mass bins' tie-break).
DASHBOARD_INCLUDE = (
    "confidence",
    "predicted",
    "gold_label",
    "correct",
    "brier",
    "calibration_id",
    "id",
)


class JobItem(Base):
    """One input of a job, its status, and its result or error."""

    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "idx", name="uq_items_job_idx"),
        Index("ix_items_job_status", "job_id", "status"),
        Index("ix_items_job_custom_id", "job_id", "custom_id"),
        # The dashboard's queries filter by classifier version and time and read only these
        # columns (the id: the equal-mass bins' tie-break): on PostgreSQL an index-only scan,
        # never the rows' JSON. Migration 0006 adds planner statistics on its grouping keys.
        Index(
            "ix_items_dashboard",
            "classifier_id",
            "scored_at",
            postgresql_include=list(DASHBOARD_INCLUDE),
        ),
        # The gold-labelled items alone, in confidence order: equal-mass bins read them sorted
        # with no sort step, and every accuracy-type query reads a third of the entries here.
        Index(
            "ix_items_labelled",
            "classifier_id",
            "confidence",
            "id",
            postgresql_include=["correct", "brier", "scored_at"],
            postgresql_where=text("correct IS NOT NULL"),
            sqlite_where=text("correct IS NOT NULL"),
        ),
        # The scored items whose dashboard columns are not filled (`db.backfills`): empty in
        # steady state, so finding them costs a few page reads at any size.
        Index(
            "ix_items_unfilled",
            "id",
            postgresql_where=text("status = 'succeeded' AND scored_at IS NULL"),
            sqlite_where=text("status = 'succeeded' AND scored_at IS NULL"),
        ),
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
    error_kind: Mapped[str | None] = mapped_column(String(16))  # a FailureKind
    gold_label: Mapped[str | None] = mapped_column(String(200))
    calibration_id: Mapped[int | None] = mapped_column(BigId)
    # A scored item's reading under the calibration it was scored with (`calibration_id`), as
    # columns so the dashboard aggregates in SQL: the classifier version, the predicted label,
    # its confidence and when it was scored; once it has a gold label, whether the prediction
    # is right and its Brier score (precomputed: per-row arithmetic is what 1M-row queries
    # spend their time on).
    classifier_id: Mapped[int | None] = mapped_column(BigId)
    predicted: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float | None] = mapped_column(Double)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    brier: Mapped[float | None] = mapped_column(Double)
    scored_at: Mapped[datetime | None]


# A row of plain columns, of any width (a Core select's row).
AnyRow = Row[*tuple[Any, ...]]

# What a result row shows of an item (`service.results.result_record` reads these names). The
# custom_id comes from the input, which keeps its type (an integer stays one); the column holds
# its text for lookups.
_items = JobItem.__table__
RESULT_COLUMNS = (
    _items.c.idx,
    _items.c.input["custom_id"].label("custom_id"),
    _items.c.status,
    _items.c.result,
    _items.c.gold_label,
    _items.c.line,
    _items.c.error,
    _items.c.error_field,
)
# The same, with the result as the JSON text the worker wrote, for a page served as stored
# (`service.results.stored_record` passes it through unparsed).
RESULT_TEXT_COLUMNS = tuple(
    cast(c, Text).label("result") if c is _items.c.result else c for c in RESULT_COLUMNS
)


class ScoredCount(Base):
    """How many items a classifier version scored with each predicted label and confidence
    bucket of `/metrics`' histogram, and their confidences' sum. Added to with each chunk's
    results, in the same transaction (a chunk's results are written exactly once, and items are
    never deleted), so a scrape reads these few rows instead of every scored item."""

    __tablename__ = "scored_counts"

    classifier_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("classifiers.id"), primary_key=True, autoincrement=False
    )
    predicted: Mapped[str] = mapped_column(String(200), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInteger)
    confidence_sum: Mapped[float] = mapped_column(Double)


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
    # The identity of the engine that scored it (`labelq.backends.identity`), once done.
    fingerprint: Mapped[str | None] = mapped_column(String(32))
    # Its results were calibrated by a calibration fitted on another engine's scores.
    calibration_mismatch: Mapped[bool | None] = mapped_column(Boolean)
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
    # A fit is a task like a chunk: sent (`dispatched_at`), claimed under a lease renewed while
    # it fits, tried a bounded number of times; the reconciler sends a lost one again.
    dispatched_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: list(SCOPES))
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


class WorkerLoad(Base):
    """A worker's last attempt to load its model (revision 0026): how long a load took, or why
    it failed. A worker that cannot load its model takes no tasks; this row is how the API
    tells a job's submitter why its queue has no live worker."""

    __tablename__ = "worker_loads"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queue: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)  # None: loaded
    load_seconds: Mapped[float | None] = mapped_column(Double)
    attempts: Mapped[int] = mapped_column(default=1)
    tried_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunState(enum.StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"


class Pipeline(Base):
    """A classification that runs on a schedule: a source read past its watermark, a job, a
    sink. `watermark` and processed files are committed only when a run succeeds."""

    __tablename__ = "pipelines"

    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_pipelines_tenant_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(128))
    definition: Mapped[dict[str, Any]]  # the spec as given (URLs may hold ${VARS})
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    watermark: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Bumped by an edit of the source or sink and by a watermark set by hand: a run started
    # under an earlier one does not move the watermark.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PipelineRun(Base):
    __tablename__ = "pipeline_runs"
    __table_args__ = (Index("ix_pipeline_runs_pipeline_state", "pipeline_id", "state"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16), default=RunState.running)
    trigger: Mapped[str] = mapped_column(String(16), default="schedule")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[str | None] = mapped_column(String(36))
    watermark_before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    watermark_after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    files: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # While it reads its source (no job yet): renewed as it goes; past it the run failed.
    lease_expires_at: Mapped[datetime | None]
    # The pipeline as the run started: its source, its sink, and the pipeline's revision.
    definition: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    revision: Mapped[int | None] = mapped_column(Integer)
    # Failed writing its sink after its job was scored: the next run takes the job over.
    sink_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class PipelineFile(Base):
    """A source file a pipeline has processed: never again, whatever its name later holds,
    unless its content changes."""

    __tablename__ = "pipeline_files"
    __table_args__ = (
        UniqueConstraint("pipeline_id", "path", "sha256", name="uq_pipeline_files_content"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pipeline_id: Mapped[int] = mapped_column(ForeignKey("pipelines.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int] = mapped_column(BigId)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineKey(Base):
    """A source key a SQL pipeline has read: the digest of its content as last read (by
    `run_id`) and as last delivered to the sink. A run re-reads an overlap window behind its
    watermark (late commits land there) and skips the keys delivered with the same content."""

    __tablename__ = "pipeline_keys"

    pipeline_id: Mapped[int] = mapped_column(
        ForeignKey("pipelines.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(512), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))
    delivered_digest: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[int] = mapped_column(BigId, index=True)
    # Runs whose engine failed on it (an `engine` failure): it is read again by key.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WebhookDelivery(Base):
    """One event to POST to a URL (an outbox row), with its attempts: claimed by a deliverer
    under a lease, retried until `give_up_at`; delivered, or failed after the window."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        UniqueConstraint("event_key", name="uq_webhook_deliveries_event_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_key: Mapped[str] = mapped_column(String(200))  # one delivery per event
    tenant: Mapped[str | None] = mapped_column(String(64))  # whose secret signs it
    event: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    pipeline_run_id: Mapped[int | None] = mapped_column(BigId)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    give_up_at: Mapped[datetime | None]  # None: the retry window from created_at


class WebhookSecret(Base):
    """The key a tenant's webhook events are signed with (Standard Webhooks, `whsec_...`)."""

    __tablename__ = "webhook_secrets"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lock(Base):
    """A named lease (e.g. the one beat allowed to run)."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


__all__ = [
    "ApiKey",
    "Base",
    "Calibration",
    "CalibrationStatus",
    "Chunk",
    "ChunkState",
    "Classifier",
    "FailureKind",
    "ItemStatus",
    "Job",
    "JobItem",
    "JobState",
    "Lock",
    "Pipeline",
    "PipelineFile",
    "PipelineKey",
    "PipelineRun",
    "RunState",
    "WebhookDelivery",
    "WebhookSecret",
    "Worker",
]


class SchemaCompat(Base):
    """One row: the oldest head revision whose code may run on this schema (migration 0021;
    `db.migrate.require_current`)."""

    __tablename__ = "schema_compat"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    oldest_code: Mapped[str] = mapped_column(String(32))


class ArchivedItem(Base):
    """The dashboard's numbers of a scored item whose row an erasure at the `items` level
    removed (retention's `items_days`, a tombstone): a narrow row the dashboard's queries read
    beside `items` (`db.dashboard.with_archive`), so their figures outlive the rows they were
    computed from. Goes with its job (`job` level, a tenant's erasure)."""

    __tablename__ = "items_archive"
    __table_args__ = (
        Index(
            "ix_items_archive_dashboard",
            "classifier_id",
            "scored_at",
            postgresql_include=list(DASHBOARD_INCLUDE),
        ),
        Index("ix_items_archive_job", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)  # the item's
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    classifier_id: Mapped[int] = mapped_column(BigId)
    calibration_id: Mapped[int | None] = mapped_column(BigId)
    predicted: Mapped[str | None] = mapped_column(String(200))
    confidence: Mapped[float | None] = mapped_column(Double)
    gold_label: Mapped[str | None] = mapped_column(String(200))
    correct: Mapped[bool | None] = mapped_column(Boolean)
    brier: Mapped[float | None] = mapped_column(Double)
    scored_at: Mapped[datetime]


# The columns an archived item keeps, as `items` names them.
ARCHIVED_COLUMNS = (
    "id",
    "job_id",
    "classifier_id",
    "calibration_id",
    "predicted",
    "confidence",
    "gold_label",
    "correct",
    "brier",
    "scored_at",
)


class DriftMonitor(Base):
    """A tenant's drift alarms on one classifier (migration 0025): its thresholds and window,
    where to send alarms, and what the last check found (`state`)."""

    __tablename__ = "drift_monitors"
    __table_args__ = (
        UniqueConstraint("tenant", "classifier", name="uq_drift_monitors_classifier"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    classifier: Mapped[str] = mapped_column(String(200))
    thresholds: Mapped[dict[str, Any]]
    window_seconds: Mapped[int] = mapped_column(Integer)
    min_items: Mapped[int] = mapped_column(Integer)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    state: Mapped[dict[str, Any] | None]
    checked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
