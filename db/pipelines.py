"""Pipelines, their runs and the files they processed: rows and the run state machine, on a
caller's Session (nothing here commits).

A run is `running` from `open_run` until `finish_run` (its sink written: the watermark and the
files it read are committed with it) or `fail_run` (also when its reader died: its lease ran
out before it handed its rows to a job); a run opened while another is running is `skipped`
at once, with the reason. Nothing else assigns `PipelineRun.state`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    Pipeline,
    PipelineFile,
    PipelineKey,
    PipelineRun,
    RunState,
    as_utc,
    utcnow,
)
from db.session import rowcount, upsert
from labelq.errors import Conflict, NotFound


# -- pipelines -----------------------------------------------------------------------------------
def get_pipeline(s: Session, name: str, *, tenant: str, for_update: bool = False) -> Pipeline:
    query = select(Pipeline).where(Pipeline.tenant == tenant, Pipeline.name == name)
    if for_update:
        query = query.with_for_update()
    row = s.scalar(query)
    if row is None:
        raise NotFound(f"pipeline {name!r} does not exist", field="pipeline")
    return row


def list_pipelines(s: Session, *, tenant: str) -> list[Pipeline]:
    return list(
        s.scalars(select(Pipeline).where(Pipeline.tenant == tenant).order_by(Pipeline.name))
    )


def enabled_pipelines(s: Session) -> list[Pipeline]:
    """Every tenant's enabled pipelines (what the schedulers read)."""
    return list(s.scalars(select(Pipeline).where(Pipeline.enabled.is_(True))))


def add_pipeline(
    s: Session, name: str, definition: dict[str, Any], enabled: bool, *, tenant: str
) -> Pipeline:
    row = Pipeline(tenant=tenant, name=name, definition=definition, enabled=enabled)
    try:
        with s.begin_nested():
            s.add(row)
    except IntegrityError:
        raise Conflict(f"pipeline {name!r} exists: PATCH it", field="name") from None
    return row


def change_pipeline(
    s: Session,
    row: Pipeline,
    definition: dict[str, Any],
    enabled: bool,
    *,
    moved: bool = False,
    reset: bool = False,
) -> None:
    """A new definition. `moved` (its source or sink changed) makes a new revision: a run
    started before it leaves the watermark alone. `reset` forgets the watermark, the files
    and keys read: the next run reads the source from its start (recorded as a run)."""
    row.definition = definition
    row.enabled = enabled
    if moved or reset:
        row.revision += 1
    if reset:
        _record_watermark(s, row, None, "edit")
        s.execute(delete(PipelineKey).where(PipelineKey.pipeline_id == row.id))
        s.execute(delete(PipelineFile).where(PipelineFile.pipeline_id == row.id))
    s.flush()


def has_position(s: Session, row: Pipeline) -> bool:
    """Whether the pipeline has read anything it would not read again: a watermark, or
    files or keys it processed."""
    if row.watermark is not None:
        return True
    for model in (PipelineFile, PipelineKey):
        if s.scalar(select(model.pipeline_id).where(model.pipeline_id == row.id).limit(1)):
            return True
    return False


def set_watermark(s: Session, row: Pipeline, watermark: dict[str, Any] | None) -> PipelineRun:
    """Set the watermark by hand (a new revision: a run going on does not overwrite it),
    recorded as a run with trigger `watermark`."""
    row.revision += 1
    return _record_watermark(s, row, watermark, "watermark")


def _record_watermark(
    s: Session, row: Pipeline, watermark: dict[str, Any] | None, trigger: str
) -> PipelineRun:
    run = PipelineRun(
        pipeline_id=row.id,
        trigger=trigger,
        state=RunState.succeeded,
        watermark_before=row.watermark,
        watermark_after=watermark,
        rows_read=0,
        finished_at=utcnow(),
        definition=row.definition,
        revision=row.revision,
    )
    row.watermark = watermark
    s.add(run)
    s.flush()
    return run


def delete_pipeline(s: Session, row: Pipeline) -> None:
    s.delete(row)


def last_started(s: Session) -> dict[tuple[str, str], datetime]:
    """(tenant, pipeline name) -> when its last run (of any kind) started: one row a
    pipeline, however many runs it had."""
    rows = s.execute(
        select(Pipeline.tenant, Pipeline.name, func.max(PipelineRun.started_at))
        .join(PipelineRun, PipelineRun.pipeline_id == Pipeline.id)
        .group_by(Pipeline.id, Pipeline.tenant, Pipeline.name)
    ).all()
    return {(tenant, name): as_utc(started) for tenant, name, started in rows}


def failing(s: Session, at_least: int) -> list[tuple[str, str, int, str | None]]:
    """(tenant, name, failed runs since its last success, the last one's error) of each
    enabled pipeline with `at_least` failed runs since it last succeeded (skipped runs count
    neither way). Two reads on the (pipeline, state) index, however long the history."""
    ok = (
        select(PipelineRun.pipeline_id.label("pid"), func.max(PipelineRun.id).label("ok"))
        .where(PipelineRun.state == RunState.succeeded)
        .group_by(PipelineRun.pipeline_id)
        .subquery()
    )
    failed = func.count(PipelineRun.id)
    rows = s.execute(
        select(Pipeline.tenant, Pipeline.name, failed, func.max(PipelineRun.id))
        .join(PipelineRun, PipelineRun.pipeline_id == Pipeline.id)
        .outerjoin(ok, ok.c.pid == Pipeline.id)
        .where(
            Pipeline.enabled.is_(True),
            PipelineRun.state == RunState.failed,
            PipelineRun.id > func.coalesce(ok.c.ok, 0),
        )
        .group_by(Pipeline.id, Pipeline.tenant, Pipeline.name)
        .having(failed >= at_least)
        .order_by(Pipeline.tenant, Pipeline.name)
    ).all()
    ends = select(PipelineRun.id, PipelineRun.error).where(
        PipelineRun.id.in_([last for *_, last in rows])
    )
    errors = {run_id: error for run_id, error in s.execute(ends)}
    return [(tenant, name, n, errors.get(last)) for tenant, name, n, last in rows]


def failures_in_a_row(s: Session, pipeline_id: int, up_to: int | None = None) -> int:
    """How many runs of a pipeline failed since its last success (up to run `up_to`)."""
    until = [] if up_to is None else [PipelineRun.id <= up_to]
    last_ok = s.scalar(
        select(func.max(PipelineRun.id)).where(
            PipelineRun.pipeline_id == pipeline_id,
            PipelineRun.state == RunState.succeeded,
            *until,
        )
    )
    return int(
        s.scalar(
            select(func.count(PipelineRun.id)).where(
                PipelineRun.pipeline_id == pipeline_id,
                PipelineRun.state == RunState.failed,
                PipelineRun.id > (last_ok or 0),
                *until,
            )
        )
        or 0
    )


def standing(s: Session, pipeline_id: int) -> tuple[PipelineRun | None, int]:
    """A pipeline's last run and how many runs failed in a row (what its listing shows)."""
    return last_run(s, pipeline_id), failures_in_a_row(s, pipeline_id)


def processed_files(s: Session, pipeline_id: int) -> set[tuple[str, str]]:
    """(path, sha256) of every file a pipeline's succeeded runs read."""
    rows = s.execute(
        select(PipelineFile.path, PipelineFile.sha256).where(
            PipelineFile.pipeline_id == pipeline_id
        )
    )
    return {(path, sha) for path, sha in rows}


def to_classify(s: Session, pipeline_id: int, run_id: int, read: list[tuple[str, str]]) -> set[str]:
    """Of the (key, content digest) pairs a run read, the keys to classify: new, changed, or
    not delivered yet. Those are recorded as read by `run_id` (delivered once it succeeds)."""
    if not read:
        return set()
    digests = dict(read)
    known = {  # one read: what was delivered, and what this run read already
        key: (digest, reader)
        for key, digest, reader in s.execute(
            select(PipelineKey.key, PipelineKey.delivered_digest, PipelineKey.run_id).where(
                PipelineKey.pipeline_id == pipeline_id, PipelineKey.key.in_(list(digests))
            )
        )
    }
    # A key this run read already (by key, before its window) is in its job once; one
    # delivered with the same content is not classified again.
    wanted = {
        k
        for k, d in digests.items()
        if k not in known or (known[k][1] != run_id and known[k][0] != d)
    }
    if wanted:
        insert = upsert(s, PipelineKey)
        rows = [
            {"pipeline_id": pipeline_id, "key": k, "digest": digests[k], "run_id": run_id}
            for k in sorted(wanted)
        ]
        # Many parameter sets, not one statement with VALUES for each: compiled once and
        # cached (a 1000-row VALUES list was compiled anew for every page, 0.4 s of 0.5).
        s.execute(
            insert.on_conflict_do_update(
                index_elements=["pipeline_id", "key"],
                set_={"digest": insert.excluded.digest, "run_id": insert.excluded.run_id},
            ),
            rows,
        )
    return wanted


def keys_to_retry(s: Session, pipeline_id: int, limit: int = 10_000) -> list[str]:
    """Keys the engine failed on in an earlier run, not delivered since: the next run reads
    them again by key (oldest first, at most `limit`)."""
    return list(
        s.scalars(
            select(PipelineKey.key)
            .where(
                PipelineKey.pipeline_id == pipeline_id,
                PipelineKey.failures > 0,
                PipelineKey.delivered_digest.is_(None),
            )
            .order_by(PipelineKey.run_id, PipelineKey.key)
            .limit(limit)
        )
    )


def failures_of(s: Session, pipeline_id: int, keys: list[str]) -> dict[str, int]:
    """How many runs' engines failed on each of `keys` before."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), 1000):
        part = keys[start : start + 1000]
        found |= {
            key: n
            for key, n in s.execute(
                select(PipelineKey.key, PipelineKey.failures).where(
                    PipelineKey.pipeline_id == pipeline_id, PipelineKey.key.in_(part)
                )
            )
        }
    return found


# -- runs ----------------------------------------------------------------------------------------
def last_run(s: Session, pipeline_id: int) -> PipelineRun | None:
    return s.scalar(
        select(PipelineRun)
        .where(PipelineRun.pipeline_id == pipeline_id)
        .order_by(PipelineRun.id.desc())
        .limit(1)
    )


def runs_of(s: Session, pipeline_id: int, limit: int) -> list[PipelineRun]:
    """A pipeline's runs, newest first."""
    return list(
        s.scalars(
            select(PipelineRun)
            .where(PipelineRun.pipeline_id == pipeline_id)
            .order_by(PipelineRun.id.desc())
            .limit(limit)
        )
    )


def get_run(s: Session, run_id: int) -> PipelineRun:
    return s.get_one(PipelineRun, run_id)


def pipeline_of_run(s: Session, run: PipelineRun, *, for_update: bool = False) -> Pipeline:
    return s.get_one(Pipeline, run.pipeline_id, with_for_update=for_update)


def _reading_expired(now: datetime, lease_seconds: float) -> Any:
    """A running run still reading its source (no job) whose lease ran out (one from before
    leases: a lease older than its start)."""
    return and_(
        PipelineRun.state == RunState.running,
        PipelineRun.job_id.is_(None),
        or_(
            PipelineRun.lease_expires_at < now,
            and_(
                PipelineRun.lease_expires_at.is_(None),
                PipelineRun.started_at < now - timedelta(seconds=lease_seconds),
            ),
        ),
    )


_DIED = "the process reading the source stopped (its lease ran out): the next run reads again"


def expire_runs(s: Session, now: datetime, lease_seconds: float) -> list[int]:
    """Fail every run whose reader died (see `_reading_expired`); their ids."""
    ids = list(s.scalars(select(PipelineRun.id).where(_reading_expired(now, lease_seconds))))
    for run_id in ids:
        fail_run(s, run_id, _DIED)
    return ids


def open_run(
    s: Session, pipeline: Pipeline, trigger: str, now: datetime, lease_seconds: float
) -> PipelineRun:
    """A new run of a pipeline locked by the caller (`get_pipeline(for_update=True)`):
    `running` under a lease of `lease_seconds`, or `skipped` with the reason when another run
    is still going (runs never overlap). A run whose reader died is failed first."""
    for dead in s.scalars(
        select(PipelineRun.id).where(
            PipelineRun.pipeline_id == pipeline.id, _reading_expired(now, lease_seconds)
        )
    ).all():
        fail_run(s, dead, _DIED)
    running = s.scalar(
        select(PipelineRun).where(
            PipelineRun.pipeline_id == pipeline.id, PipelineRun.state == RunState.running
        )
    )
    run = PipelineRun(
        pipeline_id=pipeline.id,
        trigger=trigger,
        state=RunState.skipped if running else RunState.running,
        watermark_before=pipeline.watermark,
        rows_read=0,
        lease_expires_at=None if running else now + timedelta(seconds=lease_seconds),
        definition=pipeline.definition,
        revision=pipeline.revision,
    )
    if running:
        run.error = f"run {running.id} (started {running.started_at}) is still going"
        run.finished_at = utcnow()
    s.add(run)
    s.flush()
    if not running:
        _take_over(s, pipeline, run)
    return run


def _take_over(s: Session, pipeline: Pipeline, run: PipelineRun) -> None:
    """If the last run scored its job but failed writing the sink (under this revision), the
    new run takes that job, its position and files over: nothing is read or scored again,
    and the sweep writes the sink once more. A run that took a job over has `job_id` set."""
    last = s.scalar(
        select(PipelineRun)
        .where(
            PipelineRun.pipeline_id == pipeline.id,
            PipelineRun.id < run.id,
            PipelineRun.state.in_([RunState.failed, RunState.succeeded]),
        )
        .order_by(PipelineRun.id.desc())
        .limit(1)
    )
    if last is None or not last.sink_pending or last.revision != pipeline.revision:
        return
    last.sink_pending = False
    run.job_id, run.rows_read = last.job_id, last.rows_read
    run.watermark_after, run.files = last.watermark_after, last.files
    run.lease_expires_at = None
    s.execute(  # the keys it read are this run's to deliver now
        update(PipelineKey)
        .where(PipelineKey.pipeline_id == pipeline.id, PipelineKey.run_id == last.id)
        .values(run_id=run.id)
        .execution_options(synchronize_session=False)
    )


def renew_run(s: Session, run_id: int, now: datetime, lease_seconds: float) -> bool:
    """Extend a reading run's lease; False once it is not reading any more (failed by the
    reconciler after its lease ran out, or past reading)."""
    return (
        rowcount(
            s.execute(
                update(PipelineRun)
                .where(
                    PipelineRun.id == run_id,
                    PipelineRun.state == RunState.running,
                    PipelineRun.job_id.is_(None),
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
                .execution_options(synchronize_session=False)
            )
        )
        == 1
    )


def record_read(
    s: Session,
    run_id: int,
    rows_read: int,
    job_id: str | None,
    watermark_after: dict[str, Any] | None,
    files: list[dict[str, Any]],
) -> bool:
    """What a run read into its job (its job holds it from now on: the lease ends); a run that
    found nothing new is done. False when the run is no longer running (its lease ran out
    and it was failed meanwhile): nothing is recorded."""
    run = s.get_one(PipelineRun, run_id, with_for_update=True)
    if run.state != RunState.running:
        return False
    run.lease_expires_at = None
    run.rows_read = rows_read
    run.job_id = job_id
    run.watermark_after = watermark_after
    run.files = {"files": files} if files else None
    if job_id is None:
        run.state = RunState.succeeded
        run.finished_at = utcnow()
    return True


def fail_run(s: Session, run_id: int, error: str, *, sink_pending: bool = False) -> None:
    """A running run fails with `error` (one that already ended keeps its outcome).
    `sink_pending`: its job was scored and only the sink failed, so the next run takes the
    job over rather than read and score the rows again."""
    run = s.get_one(PipelineRun, run_id, with_for_update=True)
    if run.state != RunState.running:
        return
    run.sink_pending = sink_pending
    run.lease_expires_at = None
    run.state = RunState.failed
    run.error = error
    run.finished_at = utcnow()


def finish_run(
    s: Session, run_id: int, *, retry: Sequence[str] = (), error: str | None = None
) -> None:
    """A run whose sink is written: its watermark becomes the pipeline's and the files it read
    are recorded, in the caller's transaction, and it succeeds (fails with `error`, when
    given: rows the engine kept failing on were written as error rows). The keys it read are
    delivered, but for `retry` (the engine failed on them): those count a failure and are
    read again by key by the next run."""
    run = get_run(s, run_id)
    pipeline = pipeline_of_run(s, run, for_update=True)
    if error is not None:
        run.error = error
    if run.revision is not None and run.revision != pipeline.revision:
        # Edited (source or sink) or set by hand since the run started: the edit decided the
        # position. The run's rows reached its own sink; the next run reads by the new one.
        run.error = (run.error + "; " if run.error else "") + (
            "the pipeline was changed during this run: its watermark was not applied"
        )
        run.state = RunState.succeeded if error is None else RunState.failed
        run.finished_at = utcnow()
        return
    if run.watermark_after is not None:
        pipeline.watermark = run.watermark_after
    for f in (run.files or {}).get("files", []):
        s.add(PipelineFile(pipeline_id=pipeline.id, run_id=run.id, **f))
    read = and_(PipelineKey.pipeline_id == pipeline.id, PipelineKey.run_id == run.id)
    s.execute(  # what this run read is delivered: the next overlap skips it unchanged
        update(PipelineKey)
        .where(read)
        .values(delivered_digest=PipelineKey.digest)
        .execution_options(synchronize_session=False)
    )
    for start in range(0, len(retry), 1000):
        s.execute(
            update(PipelineKey)
            .where(read, PipelineKey.key.in_(list(retry[start : start + 1000])))
            .values(delivered_digest=None, failures=PipelineKey.failures + 1)
            .execution_options(synchronize_session=False)
        )
    s.execute(  # delivered at last: its count of failed runs starts again
        update(PipelineKey)
        .where(read, PipelineKey.delivered_digest.is_not(None), PipelineKey.failures > 0)
        .values(failures=0)
        .execution_options(synchronize_session=False)
    )
    run.state = RunState.succeeded if error is None else RunState.failed
    run.finished_at = utcnow()


def runs_waiting_on_jobs(s: Session) -> list[tuple[int, str]]:
    """(run id, job id) of every running run that handed its rows to a job."""
    rows = s.execute(
        select(PipelineRun.id, PipelineRun.job_id).where(
            PipelineRun.state == RunState.running, PipelineRun.job_id.is_not(None)
        )
    ).all()
    return [(run_id, job_id) for run_id, job_id in rows if job_id is not None]
