"""Scheduled pipelines: store them (checked at once), start runs (never two at a time), and end
runs when their job ends: results to the sink, then the watermark. A run whose job or sink
failed leaves the watermark where it was, so the next run redoes it; upserts by key mean
nothing is written twice.

Starting a run reads the source page by page straight into the job's items: nothing is held
in memory, and each page is its own short transaction (as any upload).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from tenacity import retry, stop_after_attempt, wait_exponential

from db import jobs as job_rows
from db import pipelines as rows
from db import webhooks as deliveries_db
from db.classifiers import get_classifier
from db.models import JobState, Pipeline, PipelineRun, RunState, utcnow
from db.session import db_now
from labelq import outbound, targets
from labelq.errors import InputError, LabelqError, NotFound, SpecError
from labelq.pipeline import FilesSink, FilesSource, PipelineSpec, SqlSink, parse_pipeline
from labelq.scoring import Item
from labelq.sinks import FilesWriter, SqlWriter, sink_row
from labelq.sources import FilesReader, SqlReader, dump_value
from service import ingest, jobs, results
from service.context import Ctx
from service.leases import KeepAlive
from service.webhooks import DeliveryOut

log = logging.getLogger(__name__)


class RunOut(BaseModel):
    id: int
    pipeline: str
    state: RunState
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    rows_read: int
    job_id: str | None
    watermark_before: dict[str, Any] | None
    watermark_after: dict[str, Any] | None
    files: list[dict[str, Any]] | None
    error: str | None

    @classmethod
    def of(cls, run: PipelineRun, name: str) -> RunOut:
        return cls(
            id=run.id,
            pipeline=name,
            state=RunState(run.state),
            trigger=run.trigger,
            started_at=run.started_at,
            finished_at=run.finished_at,
            rows_read=run.rows_read,
            job_id=run.job_id,
            watermark_before=run.watermark_before,
            watermark_after=run.watermark_after,
            files=(run.files or {}).get("files"),
            error=run.error,
        )


class PipelineOut(BaseModel):
    name: str
    enabled: bool
    spec: dict[str, Any]
    watermark: dict[str, Any] | None
    last_run: RunOut | None
    failures_in_a_row: int = Field(description="failed runs since the last success")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Pipeline, state: tuple[PipelineRun | None, int]) -> PipelineOut:
        """`state`: its last run and failed runs in a row (`db.pipelines.standing`)."""
        last, failures = state
        return cls(
            name=row.name,
            enabled=row.enabled,
            spec=spec_of(row).shown(),
            watermark=row.watermark,
            last_run=RunOut.of(last, row.name) if last else None,
            failures_in_a_row=failures,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def spec_of(row: Pipeline) -> PipelineSpec:
    return PipelineSpec.model_validate(row.definition)


def _reader(ctx: Ctx, spec: PipelineSpec) -> SqlReader | FilesReader:
    """The source, on the operator's connection or root the pipeline names (the caller's
    tenant's to use), read-only and bounded."""
    settings, source = ctx.settings, spec.source
    if isinstance(source, FilesSource):
        folder = targets.folder(
            settings.pipeline_roots, source.root, source.path, ctx.owner, part="source", write=False
        )
        return FilesReader(source, folder)
    url, connection = targets.connection_url(
        settings.pipeline_connections,
        source.connection,
        ctx.owner,
        field="source.connection",
        write=False,
    )
    if source.query is not None and not connection.queries:
        raise SpecError(
            f"connection {source.connection!r} is read by table, not by query (the operator "
            'allows queries with "queries": true)',
            field="source.query",
        )
    return SqlReader(source, targets.engine(url, settings.pipeline_limits(), read_only=True))


def _writer(ctx: Ctx, spec: PipelineSpec) -> SqlWriter | FilesWriter | None:
    """The sink, on the operator's connection or root the pipeline names, if it has one."""
    settings, sink = ctx.settings, spec.sink
    if isinstance(sink, FilesSink):
        folder = targets.folder(
            settings.pipeline_roots, sink.root, sink.path, ctx.owner, part="sink", write=True
        )
        return FilesWriter(sink, folder)
    if isinstance(sink, SqlSink):
        url, _ = targets.connection_url(
            settings.pipeline_connections,
            sink.connection,
            ctx.owner,
            field="sink.connection",
            write=True,
        )
        return SqlWriter(sink, targets.engine(url, settings.pipeline_limits(), read_only=False))
    return None


def check(ctx: Ctx, spec: PipelineSpec) -> None:
    """Everything that can be checked before 3 a.m.: the classifier, the source's columns or
    folder, the sink's connection or folder."""
    try:
        with ctx.reads() as s:
            get_classifier(s, spec.classifier, spec.version, tenant=ctx.owner)
    except NotFound as exc:
        raise SpecError(exc.message, field="version" if spec.version else "classifier") from None
    if spec.webhook is not None:
        outbound.check_url(spec.webhook, ctx.settings.webhook_policy(), "webhook")
    reader = _reader(ctx, spec)
    if isinstance(reader, SqlReader):
        try:
            reader.check()
        finally:
            reader.close()
    writer = _writer(ctx, spec)
    if isinstance(writer, SqlWriter):
        writer.close()


def create(ctx: Ctx, data: Any) -> PipelineOut:
    spec = parse_pipeline(data)
    check(ctx, spec)
    with ctx.tx() as s:
        row = rows.add_pipeline(
            s, spec.name, spec.model_dump(mode="json"), spec.enabled, tenant=ctx.owner
        )
        return PipelineOut.of(row, rows.standing(s, row.id))


WatermarkChoice = Literal["keep", "reset"]


def update(
    ctx: Ctx, name: str, changes: dict[str, Any], watermark: WatermarkChoice | None = None
) -> PipelineOut:
    """Change fields of a pipeline (checked as at creation); effective at the next tick. A
    change of its source or sink, once it has read anything, needs `watermark`: `keep` (go on
    from the position) or `reset` (read the new source from its start). A run going on keeps
    the definition it started with and does not move the watermark."""
    if "name" in changes and changes["name"] != name:
        raise InputError("a pipeline cannot be renamed: create a new one", field="name")
    with ctx.reads() as s:
        definition = rows.get_pipeline(s, name, tenant=ctx.owner).definition
    old = PipelineSpec.model_validate(definition)
    spec = parse_pipeline({**definition, **changes})
    moved = spec.source != old.source or spec.sink != old.sink
    check(ctx, spec)
    with ctx.tx() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner, for_update=True)
        if moved and watermark is None and rows.has_position(s, row):
            raise InputError(
                "this changes the source or sink of a pipeline that has read rows: say "
                "whether its position is kept (?watermark=keep) or reset, so the new source "
                "is read from its start (?watermark=reset)",
                field="watermark",
            )
        rows.change_pipeline(
            s,
            row,
            spec.model_dump(mode="json"),
            spec.enabled,
            moved=moved,
            reset=watermark == "reset",
        )
        return PipelineOut.of(row, rows.standing(s, row.id))


Scalar = StrictInt | StrictFloat | StrictStr | None


class WatermarkIn(BaseModel):
    """A position to set: the last (watermark, key) read; rows after it are read next."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["int", "float", "str", "datetime", "date"] | None = Field(
        None, description="the values' type, when JSON does not say it (datetime, date)"
    )
    order: Scalar = Field(
        description="the watermark column's value (or the key's, without one); null clears "
        "the watermark: the next run reads from the start"
    )
    key: Scalar = Field(None, description="the key at that value (none: every key at it)")

    @field_validator("order", "key")
    @classmethod
    def _of_its_type(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            _typed(value, info.data.get("type"))
        return value

    def position(self) -> dict[str, Any] | None:
        if self.order is None:
            return None
        key = None if self.key is None else _typed(self.key, self.type)
        return {"order": dump_value(_typed(self.order, self.type)), "key": dump_value(key)}


def _typed(value: Any, kind: str | None) -> Any:
    """`value` as `kind` (ValueError naming it when it is not one)."""
    from datetime import date as date_type

    try:
        if kind == "datetime":
            return datetime.fromisoformat(str(value))
        if kind == "date":
            return date_type.fromisoformat(str(value))
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"not a {kind}: {value!r} ({exc})") from None
    return value


def set_watermark(ctx: Ctx, name: str, position: WatermarkIn) -> RunOut:
    """Set (or, with `order` null, clear) a pipeline's watermark by hand, recorded as a run;
    a run going on does not overwrite it."""
    with ctx.tx() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner, for_update=True)
        return RunOut.of(rows.set_watermark(s, row, position.position()), name)


def delete(ctx: Ctx, name: str) -> None:
    with ctx.tx() as s:
        rows.delete_pipeline(s, rows.get_pipeline(s, name, tenant=ctx.owner))


def get(ctx: Ctx, name: str) -> PipelineOut:
    with ctx.reads() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner)
        return PipelineOut.of(row, rows.standing(s, row.id))


def list_all(ctx: Ctx) -> list[PipelineOut]:
    with ctx.reads() as s:
        return [
            PipelineOut.of(row, rows.standing(s, row.id))
            for row in rows.list_pipelines(s, tenant=ctx.owner)
        ]


def runs(ctx: Ctx, name: str, limit: int) -> list[RunOut]:
    """A pipeline's runs, newest first."""
    with ctx.reads() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner)
        return [RunOut.of(run, name) for run in rows.runs_of(s, row.id, limit)]


def webhooks_of(ctx: Ctx, name: str) -> list[DeliveryOut]:
    """Deliveries for a pipeline's failed runs (of its last 500)."""
    with ctx.reads() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner)
        run_ids = [run.id for run in rows.runs_of(s, row.id, 500)]
        return [DeliveryOut.of(d) for d in deliveries_db.deliveries(s, run_ids=run_ids)]


# -- scheduling (the system context) -------------------------------------------------------------
def schedule(ctx: Ctx) -> tuple[list[tuple[str, PipelineSpec]], dict[tuple[str, str], datetime]]:
    """(tenant, spec) of every enabled pipeline, and when each pipeline's last run started
    (what beat builds its entries from)."""
    with ctx.reads() as s:
        enabled = [(row.tenant, spec_of(row)) for row in rows.enabled_pipelines(s)]
        return enabled, rows.last_started(s)


def due_now(ctx: Ctx) -> list[tuple[str, str]]:
    """(tenant, name) of enabled pipelines whose schedule says they are due (the embedded
    default's scheduler; beat asks Celery's schedule classes the same question)."""
    from service.schedules import due

    with ctx.reads() as s:
        last = rows.last_started(s)
        enabled = rows.enabled_pipelines(s)
    names = []
    for row in enabled:
        is_due, _ = due(spec_of(row).schedule, last.get((row.tenant, row.name)), row.created_at)
        if is_due:
            names.append((row.tenant, row.name))
    return names


# -- a run ---------------------------------------------------------------------------------------
def start_run(ctx: Ctx, name: str, trigger: str = "schedule") -> RunOut:
    """Read what is new in the source into a job of the caller's tenant. A run still going
    makes this one `skipped` (recorded, with the reason); never two at once."""
    lease = ctx.settings.pipeline_run_lease
    with ctx.tx() as s:
        row = rows.get_pipeline(s, name, tenant=ctx.owner, for_update=True)
        run = rows.open_run(s, row, trigger, db_now(s), lease)
        spec, run_id, pipeline_id, watermark = spec_of(row), run.id, row.id, row.watermark
        # Skipped, or it took over a scored job whose sink failed: nothing to read.
        skipped = run.state == RunState.skipped or run.job_id is not None
    if not skipped:
        try:
            with KeepAlive(lambda: _renew(ctx, run_id), lease / 3, f"run-{run_id}"):
                _read_into_job(ctx, spec, run_id, pipeline_id, watermark)
        except Exception as exc:
            error = exc.message if isinstance(exc, LabelqError) else f"{type(exc).__name__}: {exc}"
            log.warning("pipeline %s run %d failed while reading: %s", name, run_id, error)
            with ctx.tx() as s:
                rows.fail_run(s, run_id, f"reading the source failed: {error}")
    with ctx.reads() as s:
        return RunOut.of(rows.get_run(s, run_id), name)


def _digest(fields: dict[str, Any]) -> str:
    """A row's content as the run read it, to tell a re-read row that changed from one that
    did not."""
    text = json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _renew(ctx: Ctx, run_id: int) -> bool:
    with ctx.tx() as s:
        held = rows.renew_run(s, run_id, db_now(s), ctx.settings.pipeline_run_lease)
    if not held:
        log.warning("pipeline run %d ended while it read (its lease ran out)", run_id)
    return held


class _RunIntake:
    """The rows a run reads, into its job (opened with the first row: a run that finds
    nothing new makes no job)."""

    def __init__(self, ctx: Ctx, spec: PipelineSpec, run_id: int, pipeline_id: int | None):
        self.ctx, self.spec, self.run_id = ctx, spec, run_id
        self.pipeline_id = pipeline_id  # SQL sources: skip keys delivered unchanged
        self.submission: ingest.Submission | None = None
        self.rows_read = 0
        self.unchanged = 0

    def _new(self, records: list[Any]) -> list[Any]:
        """The records to classify: every input error, and rows not delivered as they are."""
        if self.pipeline_id is None:
            return records
        read = [(r[0], _digest(r[1])) for r in records if not isinstance(r, InputError)]
        with self.ctx.tx() as s:
            wanted = rows.to_classify(s, self.pipeline_id, self.run_id, read)
        kept = [r for r in records if isinstance(r, InputError) or r[0] in wanted]
        self.unchanged += len(records) - len(kept)
        return kept

    def add(self, records: list[Any]) -> None:
        records = self._new(records)
        if not records:
            return
        if self.submission is None:
            request = ingest.JobRequest(
                classifier=self.spec.classifier,
                version=self.spec.version,
                metadata={"pipeline": self.spec.name, "run_id": self.run_id},
                chunk_size=self.spec.options.chunk_size,
            )
            self.submission = ingest.open_job(self.ctx, request).submission
            assert self.submission is not None  # no Idempotency-Key: always a new job
        entries: list[Item | InputError] = []
        for record in records:
            if isinstance(record, InputError):
                entries.append(record)
            else:
                key, fields = record
                entries.append(Item(custom_id=key, fields=fields, line=self.rows_read + 1))
            self.rows_read += 1
        ingest.add(self.ctx, self.submission, entries)


def _read_into_job(
    ctx: Ctx,
    spec: PipelineSpec,
    run_id: int,
    pipeline_id: int,
    watermark: dict[str, Any] | None,
) -> None:
    is_sql = not isinstance(spec.source, FilesSource)
    intake = _RunIntake(ctx, spec, run_id, pipeline_id if is_sql else None)
    position = watermark
    files: list[dict[str, Any]] = []
    reader = _reader(ctx, spec)
    try:
        if isinstance(reader, FilesReader):
            with ctx.reads() as s:
                done = rows.processed_files(s, pipeline_id)
            pending = reader.pending(done)
            files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in pending]
            batch: list[Any] = []
            for record in reader.records(pending):
                batch.append(record)
                if len(batch) >= 1000:
                    intake.add(batch)
                    batch = []
            if batch:
                intake.add(batch)
        else:
            try:
                with ctx.reads() as s:
                    retry = rows.keys_to_retry(s, pipeline_id)
                for page in reader.by_keys(retry):  # the engine failed on these last time
                    intake.add(page)
                for page, after in reader.pages(watermark):
                    intake.add(page)
                    position = after
            finally:
                reader.close()
        if intake.submission is not None:
            ingest.seal(ctx, intake.submission)
    except Exception as exc:
        if intake.submission is not None:
            read = intake.submission.report.total
            ingest.abort(
                ctx, intake.submission, f"reading the source failed after {read} rows: {exc}"
            )
        raise
    job_id = intake.submission.job_id if intake.submission is not None else None
    with ctx.tx() as s:
        recorded = rows.record_read(s, run_id, intake.rows_read, job_id, position, files)
    if not recorded and job_id is not None:  # failed meanwhile (its lease ran out): no job
        log.warning(
            "pipeline %s run %d ended while it read; its job is cancelled", spec.name, run_id
        )
        jobs.cancel(ctx, job_id)


def finish_runs(ctx: Ctx) -> list[int]:
    """End running runs whose job has ended: sink, then watermark (one transaction), or the
    reason it failed (the system context). Returns the run ids ended."""
    with ctx.reads() as s:
        waiting = rows.runs_waiting_on_jobs(s)
    ended = []
    for run_id, job_id in waiting:
        with ctx.reads() as s:
            job = job_rows.get_job(s, job_id, tenant=None)
            if not JobState(job.state).finished:
                continue
            run = rows.get_run(s, run_id)
            pipeline = rows.pipeline_of_run(s, run)
            # The run's own version: an edit since sends the new source's rows, not these,
            # to the new sink.
            spec = PipelineSpec.model_validate(run.definition or pipeline.definition)
            state, job_error = job.state, job.error
            version = job_rows.job_classifier(s, job).version
            tenant = pipeline.tenant
        retry: list[str] = []
        gave_up: list[str] = []
        scored = False
        try:
            if state not in (JobState.succeeded, JobState.partial):  # failed rows: error rows
                raise LabelqError(f"job {job_id} {state}: {job_error or 'see its items'}")
            if not isinstance(spec.source, FilesSource):
                retry, gave_up = _engine_failures(ctx, pipeline.id, job_id)
            scored = True
            if spec.sink is not None:
                _write_sink(ctx.acting_for(tenant), spec, run_id, job_id, version, set(retry))
        except Exception as exc:
            error = exc.message if isinstance(exc, LabelqError) else f"{type(exc).__name__}: {exc}"
            log.warning("pipeline %s run %d failed: %s", spec.name, run_id, error)
            with ctx.tx() as s:  # a scored job whose sink failed: the next run takes it over
                rows.fail_run(s, run_id, error, sink_pending=scored)
            ended.append(run_id)
            continue
        outcome = None
        if gave_up:
            shown = ", ".join(repr(k) for k in gave_up[:20]) + (" ..." if len(gave_up) > 20 else "")
            outcome = (
                f"the engine failed on {len(gave_up)} row(s) in "
                f"{ctx.settings.pipeline_engine_retries} runs; written as error rows: {shown}"
            )
        with ctx.tx() as s:
            rows.finish_run(s, run_id, retry=retry, error=outcome)
        ended.append(run_id)
    return ended


def _engine_failures(ctx: Ctx, pipeline_id: int, job_id: str) -> tuple[list[str], list[str]]:
    """Of the job's rows the engine failed on: those the next run tries again (they are not
    written to the sink, and not delivered), and those out of tries (written as error rows;
    the run fails naming them)."""
    limit = ctx.settings.pipeline_engine_retries
    with ctx.reads() as s:
        failed = job_rows.engine_failed_keys(s, job_id)
        before = rows.failures_of(s, pipeline_id, failed)
    retry = [k for k in failed if before.get(k, 0) + 1 < limit]
    gave_up = [k for k in failed if before.get(k, 0) + 1 >= limit]
    return retry, gave_up


def _source_integer_keys(ctx: Ctx, spec: PipelineSpec) -> bool:
    """Whether the source's keys are integers (a SQL table's integer key column)."""
    if isinstance(spec.source, FilesSource):
        return False
    reader = _reader(ctx, spec)
    if not isinstance(reader, SqlReader):
        return False
    try:
        return reader.integer_keys()
    finally:
        reader.close()


# A sink that is briefly away is retried; past this, the run fails and the next run redoes it.
_sink_retry = retry(
    wait=wait_exponential(multiplier=0.5, max=8), stop=stop_after_attempt(4), reraise=True
)


@_sink_retry
def _write_sink(
    ctx: Ctx,
    spec: PipelineSpec,
    run_id: int,
    job_id: str,
    version: int,
    held: Collection[str] = (),
) -> None:
    """The job's rows to the sink, but for `held` (the engine failed on them: the next run
    tries again, so no error row stands in for their label meanwhile)."""
    choice = spec.options.calibration
    view = results.resolve_view(ctx, job_id, None if choice == "stored" else choice)
    out: Iterator[dict[str, Any]] = (
        r for r in results.iter_rows(ctx, job_id, view) if r.get("custom_id") not in held
    )
    now = utcnow()
    writer = _writer(ctx, spec)
    if isinstance(writer, SqlWriter):
        try:
            integer_keys = _source_integer_keys(ctx, spec)
            writer.write(
                (sink_row(r, run_id, version, now) for r in out), integer_keys=integer_keys
            )
        finally:
            writer.close()
    elif isinstance(writer, FilesWriter):
        writer.write(f"{spec.name}-run{run_id}", out, view.labels)
