"""The data layer on SQLite (and PostgreSQL in the slow tier): migrations, versions, ingestion,
the chunk life cycle under leases, and what the reconciler sees."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, make_url, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import chunks, jobs, keys, reads
from db.chunks import ChunkWork, ItemOutcome
from db.classifiers import get_classifier, latest_classifiers, store_version
from db.models import ApiKey, Chunk, ItemStatus, Job, JobItem, utcnow
from db.session import ReadOnlyTransaction, loop_url
from labelq.errors import Conflict, InputError, NotFound
from labelq.scoring import Item as ScoreItem
from labelq.settings import Settings
from labelq.spec import parse_spec
from service import ingest
from tests.conftest import system, tenant_ctx

SPEC = {"name": "db-test", "template": "{{ text }} =>", "labels": {"a": " a", "b": " b"}}
LEASE = 60.0

Factory = sessionmaker[Session]


class Recorder:
    """A dispatcher that only records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, list[int]]] = []

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        self.sent.append((job_id, queue_name, list(seqs)))

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        raise AssertionError("not expected")

    def ping(self) -> bool:
        return True


def test_migrations_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.models import Base
    from db.session import make_engine

    engine = make_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_classifier_versions(factory: Factory) -> None:
    spec = parse_spec(SPEC)
    with factory.begin() as s:
        first, created = store_version(s, spec, tenant="default")
        assert (first.version, created) == (1, True)
        again, created = store_version(s, spec, tenant="default")
        assert (again.version, again.id, created) == (1, first.id, False)
        other = parse_spec({**SPEC, "label_bias": {"a": 1}})
        second, created = store_version(s, other, tenant="default")
        assert (second.version, created) == (2, True)
        elsewhere, created = store_version(s, other, tenant="acme")  # a tenant of its own
        assert (elsewhere.version, created) == (1, True)
    with factory() as s:
        assert get_classifier(s, "db-test", None, tenant="default").version == 2
        first_spec = get_classifier(s, "db-test", 1, tenant="default").spec
        assert first_spec == spec.model_dump(mode="json")
        assert [c.version for c in latest_classifiers(s, tenant="default")] == [2]
        with pytest.raises(NotFound):
            get_classifier(s, "db-test", 3, tenant="default")
        with pytest.raises(NotFound):
            get_classifier(s, "db-test", 2, tenant="acme")


def _submit(
    factory: Factory, entries: list[Any], chunk_size: int = 3, key: str | None = None
) -> tuple[Job, Recorder]:
    with factory.begin() as s:
        store_version(s, parse_spec(SPEC), tenant="default")
    settings = Settings(model="m", chunk_size=chunk_size)
    recorder = Recorder()
    ctx = tenant_ctx(factory, settings, recorder)
    request = ingest.JobRequest(classifier="db-test", metadata={"k": 1}, idempotency_key=key)
    job_id = ingest.submit(ctx, request, entries)
    return _job(factory, job_id), recorder


def _items(n: int) -> list[Any]:
    return [ScoreItem(custom_id=f"c{i}", fields={"text": f"t{i}"}, line=i + 1) for i in range(n)]


def _claim(factory: Factory, job_id: str, seq: int, owner: str = "w1", attempts: int = 3) -> Any:
    with factory.begin() as s:
        return chunks.claim_chunk(s, job_id, seq, owner, lease_seconds=LEASE, max_attempts=attempts)


def _complete(factory: Factory, work: ChunkWork, results: dict[int, Any]) -> bool:
    with factory.begin() as s:
        return chunks.complete_chunk(s, work, results, None)


def _job(factory: Factory, job_id: str) -> Job:
    with factory() as s:
        return s.get_one(Job, job_id)


def test_ingest_keeps_bad_entries_as_failed_items_in_order(factory: Factory) -> None:
    entries = [
        *_items(2),
        InputError("invalid JSON", line=3),
        ScoreItem(custom_id=9, fields={"txt": "x"}, line=4),
        *_items(3)[2:],
    ]
    job, recorder = _submit(factory, entries, chunk_size=2)
    # chunk 1 (idx 2, 3) holds only rejected items: done at once, never sent.
    assert recorder.sent == [(job.id, job.queue, [0, 2])]
    with factory() as s:
        row = s.get_one(Job, job.id)
        assert (row.total, row.failed, row.chunks_total, row.chunks_done) == (5, 2, 3, 1)
        items = s.scalars(
            select(JobItem).where(JobItem.job_id == job.id).order_by(JobItem.idx)
        ).all()
        assert [i.status for i in items] == ["pending", "pending", "failed", "failed", "pending"]
        assert (items[2].line, items[2].error) == (3, "invalid JSON")
        assert items[3].error_field == "text" and items[3].input == {"txt": "x", "custom_id": 9}
        sent = s.scalars(select(Chunk.seq).where(Chunk.dispatched_at.is_not(None))).all()
        assert sorted(sent) == [0, 2]


def test_chunk_life_cycle_is_idempotent(factory: Factory) -> None:
    job, _ = _submit(factory, _items(5), chunk_size=3)
    work = _claim(factory, job.id, 0)
    assert work is not None and [i.custom_id for _, i in work.items] == ["c0", "c1", "c2"]
    results = {item_id: ItemOutcome({"label": "a"}) for item_id, _ in work.items[:2]}
    results[work.items[2][0]] = ItemOutcome(None, "boom", "input")
    assert _complete(factory, work, results)
    # A redelivered chunk neither claims nor writes again; counts are not doubled.
    assert _claim(factory, job.id, 0) is None
    assert not _complete(factory, work, results)
    row = _job(factory, job.id)
    assert (row.state, row.succeeded, row.failed, row.chunks_done) == ("running", 2, 1, 1)
    # A second delivery while the first holds a live lease is refused.
    work2 = _claim(factory, job.id, 1, owner="w1")
    assert work2 is not None
    assert _claim(factory, job.id, 1, owner="w2") is None
    done = {item_id: ItemOutcome({"label": "b"}) for item_id, _ in work2.items}
    assert _complete(factory, work2, done)
    row = _job(factory, job.id)
    # One item without a result: the job says so, and why.
    assert (row.state, row.succeeded, row.failed) == ("partial", 4, 1)
    assert row.started_at is not None and row.finished_at is not None
    with factory() as s:
        assert jobs.failures_by_kind(s, job.id) == {"input": 1}


def _expire_leases(factory: Factory, job_id: str) -> None:
    with factory.begin() as s:
        s.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_an_expired_lease_is_taken_over_and_the_old_owner_writes_nothing(
    factory: Factory,
) -> None:
    job, _ = _submit(factory, _items(3), chunk_size=3)
    dead = _claim(factory, job.id, 0, owner="dead")
    assert dead is not None
    _expire_leases(factory, job.id)
    alive = _claim(factory, job.id, 0, owner="alive")
    assert alive is not None and alive.attempt == 2
    with factory.begin() as s:
        assert not chunks.renew_lease(s, dead.chunk_id, "dead", LEASE)
        assert chunks.renew_lease(s, alive.chunk_id, "alive", LEASE)
    results = {item_id: ItemOutcome({"label": "a"}) for item_id, _ in dead.items}
    assert not _complete(factory, dead, results)  # woke up late: not its chunk any more
    assert _complete(factory, alive, results)
    assert (_job(factory, job.id).state, _job(factory, job.id).succeeded) == ("succeeded", 3)


def test_attempts_are_bounded_and_the_job_ends(factory: Factory) -> None:
    job, _ = _submit(factory, _items(2), chunk_size=2)
    for _ in range(2):
        assert _claim(factory, job.id, 0, attempts=2) is not None  # worker "dies"
        _expire_leases(factory, job.id)
    assert _claim(factory, job.id, 0, attempts=2) is None
    row = _job(factory, job.id)
    assert (row.state, row.failed, row.error) == ("failed", 2, "every item failed")
    with factory() as s:
        errors = s.scalars(select(JobItem.error).where(JobItem.job_id == job.id)).all()
    assert all("gave up after 2 attempts" in (e or "") for e in errors)
    assert all("lease expired" in (e or "") for e in errors)


def test_engine_failure_hands_back_then_fails_the_job(factory: Factory) -> None:
    job, _ = _submit(factory, _items(6), chunk_size=2)
    work = _claim(factory, job.id, 0, attempts=2)
    with factory.begin() as s:
        assert chunks.release_chunk(s, work, "engine down", retry_in=3600, max_attempts=2)
    # Handed back, not due yet: not claimable, and the reconciler does not send it.
    assert _claim(factory, job.id, 0, attempts=2) is None
    with factory() as s:
        due = chunks.chunks_to_send(
            s, utcnow(), utcnow() - timedelta(seconds=120), served=[job.queue]
        )
    assert (job.id, 0) not in {(r.job_id, r.seq) for r in due}
    with factory.begin() as s:
        s.execute(update(Chunk).values(available_at=utcnow() - timedelta(seconds=1)))
    with factory() as s:
        due = chunks.chunks_to_send(
            s, utcnow(), utcnow() - timedelta(seconds=120), served=[job.queue]
        )
    assert (job.id, 0) in {(r.job_id, r.seq) for r in due}
    work = _claim(factory, job.id, 0, attempts=2)
    assert work is not None and work.attempt == 2
    with factory.begin() as s:
        assert chunks.release_chunk(s, work, "engine down", retry_in=1, max_attempts=2)
    row = _job(factory, job.id)
    assert (row.state, row.failed, row.chunks_done) == ("failed", 6, 3)
    with factory() as s:
        errors = s.scalars(
            select(JobItem.error).where(JobItem.job_id == job.id).order_by(JobItem.idx)
        )
        errors = list(errors)
    assert errors[0] == "gave up after 2 attempts: engine down"
    assert errors[2].startswith("not run: the engine failed on chunk 0: engine down")


def test_reconciler_sends_what_has_no_task(factory: Factory) -> None:
    job, _ = _submit(factory, _items(9), chunk_size=3)
    now = utcnow()
    stalled_before = now - timedelta(seconds=120)
    with factory() as s:
        assert (
            chunks.chunks_to_send(s, now, stalled_before, served=[job.queue]) == []
        )  # all three were just sent
    # The broker lost the tasks: nothing is claimed; once the queue stalls, all are re-sent.
    with factory() as s:
        later = now + timedelta(seconds=121)
        refs = chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[job.queue])
    assert [r.seq for r in refs] == [0, 1, 2]
    # A live lease on the queue means it is not stalled.
    assert _claim(factory, job.id, 0) is not None
    with factory() as s:
        later = utcnow() + timedelta(seconds=1)
        assert (
            chunks.chunks_to_send(s, later, later + timedelta(seconds=1), served=[job.queue]) == []
        )
    # Its worker dies: once the lease expires the chunk is sent again, once.
    _expire_leases(factory, job.id)
    with factory() as s:
        refs = chunks.chunks_to_send(
            s, utcnow(), utcnow() - timedelta(seconds=120), served=[job.queue]
        )
    assert [r.seq for r in refs] == [0]
    with factory.begin() as s:
        chunks.mark_dispatched(s, job.id, [0], utcnow())
    with factory() as s:
        assert (
            chunks.chunks_to_send(
                s, utcnow(), utcnow() - timedelta(seconds=120), served=[job.queue]
            )
            == []
        )


def test_a_queue_no_worker_serves_gets_no_copies_and_a_served_one_one_a_period(
    factory: Factory,
) -> None:
    """Tasks lost on a queue with no claims: re-sent only when a worker serves the queue, and
    then once a stall period, never the whole backlog every period."""
    job, _ = _submit(factory, _items(9), chunk_size=3)
    sent = 0
    for period in range(1, 6):  # five stall periods with nobody serving the queue
        at = utcnow() + timedelta(seconds=121 * period)
        with factory() as s:
            sent += len(chunks.chunks_to_send(s, at, at - timedelta(seconds=120), served=[]))
    assert sent == 0
    at = utcnow() + timedelta(seconds=121)
    with factory() as s:
        refs = chunks.chunks_to_send(s, at, at - timedelta(seconds=120), served=[job.queue])
    assert [r.seq for r in refs] == [0, 1, 2]
    with factory.begin() as s:
        chunks.mark_dispatched(s, job.id, [0, 1, 2], at)
    soon = at + timedelta(seconds=60)  # within the period after the re-send: nothing again
    with factory() as s:
        assert (
            chunks.chunks_to_send(s, soon, soon - timedelta(seconds=120), served=[job.queue]) == []
        )


def test_a_lost_task_on_a_busy_queue_is_sent_again_by_itself(factory: Factory) -> None:
    """Job a's first task is lost; the queue goes on with the tasks sent after it (job b's),
    and keeps a live lease all along, so it never stalls. A stall period after the queue went
    past it, that one chunk is sent again, alone."""
    a, _ = _submit(factory, _items(3), chunk_size=1)
    b, _ = _submit(factory, _items(3), chunk_size=1, key="b")
    assert a.queue == b.queue
    for job_id, seq in [(a.id, 1), (a.id, 2), (b.id, 0), (b.id, 1)]:
        work = _claim(factory, job_id, seq)
        assert _complete(factory, work, {item_id: ItemOutcome({}) for item_id, _ in work.items})
    assert _claim(factory, b.id, 2) is not None  # a live lease: the queue is not stalled
    now = utcnow() + timedelta(seconds=1)
    with factory() as s:  # not a stall period yet since the queue went past it
        assert chunks.chunks_to_send(s, now, now - timedelta(seconds=120), served=[a.queue]) == []
    later = now + timedelta(seconds=121)
    with factory.begin() as s:
        s.execute(
            update(Chunk)
            .where(Chunk.job_id == b.id, Chunk.seq == 2)
            .values(lease_expires_at=later + timedelta(seconds=60))
        )
    with factory() as s:
        refs = chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[a.queue])
    assert [(r.job_id, r.seq) for r in refs] == [(a.id, 0)]
    with factory.begin() as s:
        chunks.mark_dispatched(s, a.id, [0], later)
    again = later + timedelta(seconds=60)
    with factory() as s:  # sent again: not once more within the period
        assert (
            chunks.chunks_to_send(s, again, again - timedelta(seconds=120), served=[a.queue]) == []
        )


def test_a_chunk_of_a_later_priority_is_not_lost_when_an_earlier_one_overtakes_it(
    factory: Factory,
) -> None:
    """Tasks carry a priority by their place in their job, so a small job's first chunk sent
    after a big job's sixth is taken before it: that says nothing of the sixth's task (it is
    not sent again). A chunk of the sixth's own priority (b's fifth) claimed from a later
    send does: the sixth was passed, and is sent again, alone."""
    a, _ = _submit(factory, _items(6), chunk_size=1)
    b, _ = _submit(factory, _items(6), chunk_size=1, key="b")
    assert [chunks.chunk_priority(seq) for seq in (0, 3, 4, 5, 31, 32, 255, 256)] == [
        0, 0, 3, 3, 3, 6, 6, 9,
    ]  # fmt: skip

    def done(job_id: str, seq: int) -> None:
        work = _claim(factory, job_id, seq)
        assert _complete(factory, work, {item_id: ItemOutcome({}) for item_id, _ in work.items})

    for seq in range(5):
        done(a.id, seq)  # a's sixth (seq 5, priority 3) waits
    done(b.id, 0)  # priority 0, sent after a's sixth
    held = _claim(factory, b.id, 1)  # a live lease: the queue is not stalled
    assert held is not None
    later = utcnow() + timedelta(seconds=121)
    with factory.begin() as s:
        s.execute(
            update(Chunk)
            .where(Chunk.job_id == b.id, Chunk.seq == 1)
            .values(lease_expires_at=later + timedelta(seconds=600))
        )
    with factory() as s:
        refs = chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[a.queue])
    assert refs == [], "an earlier priority's chunk overtook it: its task is not lost"
    done(b.id, 4)  # priority 3, as a's sixth, sent after it
    later = later + timedelta(seconds=121)
    with factory() as s:
        refs = chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[a.queue])
    assert [(r.job_id, r.seq) for r in refs] == [(a.id, 5)]


def test_the_sweep_sends_a_lost_task_again_only_where_a_worker_serves(factory: Factory) -> None:
    """The reconciler reads which queues a live worker serves from the heartbeats."""
    from db import workers
    from service.reconcile import sweep

    job, _ = _submit(factory, _items(2), chunk_size=1)
    with factory.begin() as s:  # both tasks sent 5 minutes ago and lost
        s.execute(update(Chunk).values(dispatched_at=utcnow() - timedelta(seconds=300)))
    recorder = Recorder()
    ctx = system(factory, Settings(model="m"), recorder)
    assert sweep(ctx).sent == 0 and recorder.sent == []
    with factory.begin() as s:
        workers.beat(s, "w1", job.queue, "m")
    assert sweep(ctx).sent == 2 and recorder.sent == [(job.id, job.queue, [0, 1])]
    assert sweep(ctx).sent == 0  # sent: not again within the stall period


def test_sweep_ends_jobs_whose_chunks_are_done(factory: Factory) -> None:
    from service.reconcile import sweep

    job, _ = _submit(factory, _items(2), chunk_size=2)
    with factory.begin() as s:
        s.execute(update(Chunk).values(state="done", succeeded=2))
        s.execute(update(Job).values(chunks_done=1, succeeded=2))
    report = sweep(system(factory, Settings(), Recorder()))
    assert report.jobs_ended == [job.id] and _job(factory, job.id).state == "succeeded"


def test_cancel_stops_pending_chunks_and_keeps_finished_ones(factory: Factory) -> None:
    job, _ = _submit(factory, _items(9), chunk_size=3)
    running = _claim(factory, job.id, 0)
    assert running is not None
    with factory.begin() as s:
        with pytest.raises(NotFound):  # another tenant cannot
            chunks.cancel_job(s, job.id, tenant="acme")
        assert chunks.cancel_job(s, job.id, tenant="default").state == "cancelling"
    assert _claim(factory, job.id, 1) is None
    _complete(factory, running, {i: ItemOutcome({"label": "a"}) for i, _ in running.items})
    with factory() as s:
        row = s.get_one(Job, job.id)
        assert (row.state, row.succeeded) == ("cancelled", 3)
        statuses = s.execute(
            select(JobItem.status, func.count())
            .where(JobItem.job_id == job.id)
            .group_by(JobItem.status)
        ).all()
        assert dict(statuses) == {ItemStatus.succeeded: 3, ItemStatus.cancelled: 6}
        cancelled = s.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.state == "cancelled")
        )
        assert cancelled == 2
    with factory.begin() as s, pytest.raises(Conflict):
        chunks.cancel_job(s, job.id, tenant=None)


def test_idempotency_key_returns_the_first_job(factory: Factory) -> None:
    job, _ = _submit(factory, _items(1), key="abc")
    ctx = tenant_ctx(factory, Settings(model="m"))
    again = ingest.open_job(ctx, ingest.JobRequest(classifier="db-test", idempotency_key="abc"))
    assert again.submission is None and again.job_id == job.id


def test_results_iterate_in_input_order_across_pages(factory: Factory) -> None:
    job, _ = _submit(factory, _items(25), chunk_size=10)
    ctx = system(factory, Settings())
    fetched: list[int] = []

    def fetch(s: Session, after: int, size: int) -> list[JobItem]:
        fetched.append(after)
        return jobs.items_page(s, job.id, after, size)

    ids = [i.custom_id for i in ctx.pages(fetch, -1, lambda i: i.idx, size=7)]
    assert ids == [f"c{i}" for i in range(25)]
    assert fetched == [-1, 6, 13, 20], "a page a read, each after the last one's end"
    with factory() as s:
        assert [i.idx for i in jobs.items_page(s, job.id, after_idx=20, limit=3)] == [21, 22, 23]


def test_api_keys_are_stored_hashed_and_revocable(factory: Factory) -> None:
    with factory.begin() as s:
        row, key = keys.add_key(s, "ci", ["read"], tenant="acme")
    with factory.begin() as s:
        found = keys.find_key(s, key)
        assert found is not None and (found.tenant, found.scopes) == ("acme", ["read"])
        assert found.last_used_at is None and keys.use_is_stale(found)
        keys.mark_used(s, found.id)
    with factory.begin() as s:
        found = keys.find_key(s, key)
        assert found is not None and found.last_used_at is not None
        assert not keys.use_is_stale(found), "a use is recorded once a minute, not per request"
        assert keys.find_key(s, key + "x") is None
        assert key not in {k.key_hash for k in s.scalars(select(ApiKey))}
        assert keys.revoke(s, row.id, tenant="other") is None  # not another tenant's to revoke
        assert keys.revoke(s, row.id, tenant="acme") is not None
    with factory() as s:
        assert keys.find_key(s, key) is None


def test_a_claim_racing_its_own_send_is_still_recovered(factory: Factory) -> None:
    """A worker may claim a chunk before the sender records the send. If that worker dies,
    the reconciler must still send the chunk again."""
    job, _ = _submit(factory, _items(3), chunk_size=3)
    assert _claim(factory, job.id, 0, owner="dead") is not None
    with factory.begin() as s:  # the send recorded just after the claim
        chunks.mark_dispatched(s, job.id, [0], utcnow() + timedelta(milliseconds=20))
    _expire_leases(factory, job.id)
    later = utcnow() + timedelta(seconds=1)
    with factory() as s:
        assert (
            chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[job.queue])
            == []
        )
        # ... but a stall period later it is sent again, whatever the timestamps say.
        much_later = later + timedelta(seconds=121)
        refs = chunks.chunks_to_send(
            s, much_later, much_later - timedelta(seconds=120), served=[job.queue]
        )
    assert [(r.job_id, r.seq) for r in refs] == [(job.id, 0)]


@pytest.mark.parametrize(
    ("url", "driver", "query"),
    [
        ("postgresql+psycopg://u:p@h:5432/d", "postgresql+asyncpg", {}),
        ("postgresql://h/d?sslmode=require", "postgresql+asyncpg", {"ssl": "require"}),
        (
            "postgresql+psycopg://h/d?sslmode=require&connect_timeout=5",
            "postgresql+psycopg",
            {"sslmode": "require", "connect_timeout": "5"},
        ),
    ],
)
def test_loop_reads_take_asyncpg_unless_the_url_has_libpq_only_options(
    url: str, driver: str, query: dict[str, str]
) -> None:
    loop = loop_url(make_url(url))
    assert (loop.drivername, dict(loop.query)) == (driver, query)
    assert (loop.host, loop.database) == (make_url(url).host, make_url(url).database)


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_driver_reads_on_the_loop_give_what_sqlalchemy_gives(
    factory: Factory, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's status and its pages as stored, read by asyncpg itself on the API's loop
    engine (`DriverRead`), equal SQLAlchemy's reads of the same rows on a plain session, value
    for value and type for type: zoned times, JSON metadata, custom ids kept as the input's
    type (an integer stays one), failed items with their line and error, gold labels."""
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession

    from db.session import async_read_engine, async_sessions

    fetched: list[str] = []
    driver_fetch = reads._driver_fetch

    def counted(conn: Any, sql: str, args: list[Any]) -> list[Any]:
        fetched.append(sql)
        return driver_fetch(conn, sql, args)

    monkeypatch.setattr(reads, "_driver_fetch", counted)
    entries = [
        *_items(2),
        InputError("invalid JSON", line=3),
        ScoreItem(custom_id=9, fields={"text": "int id"}, line=4),
        ScoreItem(custom_id=None, fields={"text": "no id"}, line=5),
    ]
    job, _ = _submit(factory, entries, chunk_size=5)
    work = _claim(factory, job.id, 0)
    assert work is not None
    results = {
        item_id: ItemOutcome({"label": "a", "custom_id": i.custom_id}) for item_id, i in work.items
    }
    results[work.items[1][0]] = ItemOutcome(None, "boom", "engine")
    assert _complete(factory, work, results)
    with factory.begin() as s:
        jobs.set_gold_labels(s, {work.items[0][0]: "b"})

    def read(s: Session) -> list[Any]:
        return [
            reads.job_status_row(s, job.id, tenant=None),
            reads.job_status_row(s, job.id, tenant="default"),
            reads.stored_result_rows(s, job.id, -1, 10, tenant=None),
            reads.stored_result_rows(s, job.id, 1, 2, tenant="default"),
            reads.stored_result_rows(s, job.id, -1, 10, tenant="another"),
        ]

    async def on_the_loop() -> list[Any]:
        engine = async_read_engine(factory.kw["bind"], 2)
        assert engine is not None
        try:
            async with async_sessions(engine)() as s:
                assert isinstance(s, AsyncSession)
                return await s.run_sync(read)
        finally:
            await engine.dispose()

    with factory() as s:
        plain = read(s)
    assert not fetched, "a plain session reads through SQLAlchemy"
    driver = asyncio.run(on_the_loop())
    assert len(fetched) == 5, "the loop engine's reads went to asyncpg itself"
    assert driver == plain
    assert [[type(v) for v in row] for row in driver[2]] == [
        [type(v) for v in row] for row in plain[2]
    ]
    status = driver[0]
    assert status["created_at"].tzinfo is not None and status["metadata"] == {"k": 1}
    assert [row[1] for row in driver[2]] == ["c0", "c1", None, 9, None]
    assert driver[4] == []


def test_read_sessions_refuse_to_write(factory: Factory) -> None:
    """A use case's read session (autocommit) cannot write: a write there would commit on its
    own, outside any transaction, so it raises instead."""
    job, _ = _submit(factory, _items(1), chunk_size=1)
    ctx = system(factory, Settings())
    with ctx.reads() as s, pytest.raises(ReadOnlyTransaction):
        s.execute(update(Job).values(error="x"))
    with ctx.reads() as s, pytest.raises(ReadOnlyTransaction):
        s.get_one(Job, job.id).error = "x"
        s.flush()
    assert _job(factory, job.id).error is None


def test_migration_0009_moves_pipelines_to_operator_names_and_keys_to_tenants(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pipeline that named a URL or a folder itself is rewritten to a `legacy-<id>-...`
    name, disabled, and the upgrade says what each name stood for (no password); after it an
    Idempotency-Key is each tenant's own; and it comes down and up again."""
    from alembic import command
    from sqlalchemy import text

    from db.migrate import alembic_config, upgrade
    from tests.conftest import engine_at

    command.downgrade(alembic_config(db_url), "0008")
    legacy = {
        "name": "old",
        "classifier": "c",
        "schedule": {"every": 60},
        "source": {"kind": "sql", "url": "postgresql://u:hunter2@db/news", "table": "t",
                   "key": "id", "fields": {"text": "body"}},
        "sink": {"kind": "files", "path": "/data/out"},
    }  # fmt: skip
    engine = engine_at(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pipelines (tenant, name, definition, enabled, created_at, "
                "updated_at) VALUES ('acme', 'old', :d, true, :t, :t)"
            ),
            {"d": json.dumps(legacy), "t": utcnow()},
        )
    engine.dispose()
    upgrade(db_url)
    said = capsys.readouterr().out
    assert "acme/old: source postgresql://u:***@db/news is now connection 'legacy-" in said
    assert "hunter2" not in said and "root 'legacy-" in said
    with Session(engine_at(db_url)) as s:
        row = s.execute(text("SELECT id, definition, enabled FROM pipelines")).one()
    definition = row[1] if isinstance(row[1], dict) else json.loads(row[1])
    assert not row[2]
    assert definition["source"]["connection"] == f"legacy-{row[0]}-source"
    assert "url" not in definition["source"]
    assert definition["sink"] == {"kind": "files", "root": f"legacy-{row[0]}-sink", "path": ""}
    from labelq.pipeline import PipelineSpec

    PipelineSpec.model_validate(definition)  # the new shape, readable by the service
    command.downgrade(alembic_config(db_url), "0008")
    upgrade(db_url)


def test_a_revision_that_fails_leaves_the_one_before_and_the_next_upgrade_passes(
    db_url: str,
) -> None:
    """One transaction per revision, DDL included (SQLite's driver would commit each
    statement by itself): 0018 fails at its second column (one of that name is in the way),
    after it added its first. The database stays at 0017 without it (before, SQLite kept it
    and every later upgrade failed on "duplicate column name"); once the way is clear the same
    upgrade completes, 0019's concurrent index included, and runs again after a downgrade."""
    from alembic import command
    from alembic.script import ScriptDirectory
    from sqlalchemy import inspect, text

    from db.migrate import alembic_config, upgrade
    from tests.conftest import engine_at

    def state() -> tuple[str, list[str], bool]:
        engine = engine_at(db_url)
        try:
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                columns = [c["name"] for c in inspect(conn).get_columns("jobs")]
                indexes = [i["name"] for i in inspect(conn).get_indexes("jobs")]
            erase = [c for c in columns if c.startswith("erase")]
            return str(version), erase, "ix_jobs_erase_pending" in indexes
        finally:
            engine.dispose()

    def run(sql: str) -> None:
        engine = engine_at(db_url)
        with engine.begin() as conn:
            conn.execute(text(sql))
        engine.dispose()

    command.downgrade(alembic_config(db_url), "0017")
    run("ALTER TABLE jobs ADD COLUMN erased_at TIMESTAMP")
    with pytest.raises(DBAPIError, match="erased_at"):
        upgrade(db_url)
    assert state() == ("0017", ["erased_at"], False), "the failed revision left nothing"
    run("ALTER TABLE jobs DROP COLUMN erased_at")
    upgrade(db_url)
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert state() == (head, ["erase", "erased_at"], True)
    command.downgrade(alembic_config(db_url), "0018")
    assert state()[2] is False
    upgrade(db_url)
    assert state() == (head, ["erase", "erased_at"], True)


def test_a_host_whose_clock_runs_ahead_takes_no_live_lease(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases and locks are stamped and judged by the database's clock: a worker whose own
    clock runs 90 s ahead (a 60 s lease) neither takes another worker's live chunk nor the
    beat's live lock."""
    import db.chunks
    import db.jobs
    import db.locks
    import db.models
    import db.workers
    from db import locks

    job, _ = _submit(factory, _items(3), chunk_size=3)
    work = _claim(factory, job.id, 0, owner="a")
    assert work is not None
    with factory.begin() as s:
        assert locks.acquire(s, "beat", "a", LEASE)
    real = db.models.utcnow

    def ahead() -> Any:
        return real() + timedelta(seconds=90)

    for module in (db.models, db.chunks, db.jobs, db.locks, db.workers):
        monkeypatch.setattr(module, "utcnow", ahead, raising=False)
    assert _claim(factory, job.id, 0, owner="b") is None, "a's lease is live by the database"
    with factory.begin() as s:
        assert chunks.renew_lease(s, work.chunk_id, "a", LEASE)
        assert not locks.acquire(s, "beat", "b", LEASE)
        assert locks.holder(s, "beat") == "a"


def test_a_chunk_handed_back_before_its_send_is_recorded_is_sent_again_when_due(
    factory: Factory,
) -> None:
    """A worker quick enough to claim a chunk and hand it back (an engine that fails at once)
    before the sender records the send: the late record must not cover the hand-back, or the
    chunk waits a stall period (and, with no worker seen, for good) instead of its backoff.
    Found by bench/pipeline_soak.py, where the dispatcher runs a task inside the send."""
    from db.session import db_now

    job, _ = _submit(factory, _items(2), chunk_size=2)
    with factory() as s:
        sent_at = db_now(s)  # taken before sending, as service.dispatch.send does
    work = _claim(factory, job.id, 0)
    with factory.begin() as s:
        assert chunks.release_chunk(s, work, "engine down", retry_in=0, max_attempts=3)
    with factory.begin() as s:
        chunks.mark_dispatched(s, job.id, [0], sent_at)  # the sender's late record
    later = utcnow() + timedelta(seconds=1)
    with factory() as s:
        due = chunks.chunks_to_send(s, later, later - timedelta(seconds=120), served=[])
    assert [(r.job_id, r.seq) for r in due] == [(job.id, 0)]
