"""The data layer on SQLite and PostgreSQL: migrations, versions, ingestion, chunk life cycle."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from db import repo
from db.models import Chunk, Item, ItemStatus, Job
from labelq.errors import Conflict, InputError, NotFound
from labelq.scoring import Item as ScoreItem
from labelq.spec import parse_spec

SPEC = {"name": "db-test", "template": "{{ text }} =>", "labels": {"a": " a", "b": " b"}}


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


def test_classifier_versions(factory: Any) -> None:
    spec = parse_spec(SPEC)
    first, created = repo.create_classifier(factory, spec)
    assert (first.version, created) == (1, True)
    again, created = repo.create_classifier(factory, spec)
    assert (again.version, again.id, created) == (1, first.id, False)
    second, created = repo.create_classifier(factory, parse_spec({**SPEC, "label_bias": {"a": 1}}))
    assert (second.version, created) == (2, True)
    with factory() as s:
        assert repo.get_classifier(s, "db-test").version == 2
        assert repo.get_classifier(s, "db-test", 1).spec == spec.model_dump(mode="json")
        assert [c.version for c in repo.latest_classifiers(s)] == [2]
        with pytest.raises(NotFound):
            repo.get_classifier(s, "db-test", 3)


def _job(
    factory: Any, entries: list[Any], chunk_size: int = 3, key: str | None = None
) -> tuple[Job, list[int]]:
    classifier, _ = repo.create_classifier(factory, parse_spec(SPEC))
    job, created = repo.start_job(factory, classifier, "m", chunk_size, {"k": 1}, key)
    assert created
    report = repo.ingest_items(factory, job, entries, {"text"})
    return job, repo.seal_job(factory, job.id, report)


def _items(n: int) -> list[Any]:
    return [ScoreItem(custom_id=f"c{i}", fields={"text": f"t{i}"}, line=i + 1) for i in range(n)]


def test_ingest_keeps_bad_entries_as_failed_items_in_order(factory: Any) -> None:
    entries = [
        *_items(2),
        InputError("invalid JSON", line=3),
        ScoreItem(custom_id=9, fields={"txt": "x"}, line=4),
        *_items(3)[2:],
    ]
    job, seqs = _job(factory, entries, chunk_size=2)
    with factory() as s:
        job = s.get_one(Job, job.id)
        assert (job.total, job.failed, job.chunks_total) == (5, 2, 3)
        # chunk 1 (idx 2, 3) holds only rejected items: done at once, never dispatched.
        assert seqs == [0, 2] and job.chunks_done == 1
        rows = s.scalars(select(Item).where(Item.job_id == job.id).order_by(Item.idx)).all()
        assert [r.status for r in rows] == ["pending", "pending", "failed", "failed", "pending"]
        assert (rows[2].line, rows[2].error) == (3, "invalid JSON")
        assert rows[3].error_field == "text" and rows[3].input == {"txt": "x", "custom_id": 9}


def test_chunk_life_cycle_is_idempotent(factory: Any) -> None:
    job, seqs = _job(factory, _items(5), chunk_size=3)
    assert seqs == [0, 1]
    work = repo.claim_chunk(factory, job.id, 0, max_attempts=3)
    assert work is not None and [i.custom_id for _, i in work.items] == ["c0", "c1", "c2"]
    results = {item_id: ({"label": "a"}, None) for item_id, _ in work.items[:2]}
    results[work.items[2][0]] = (None, "boom")
    assert repo.complete_chunk(factory, work, results, None)
    # A redelivered chunk neither claims nor writes again; counts are not doubled.
    assert repo.claim_chunk(factory, job.id, 0, max_attempts=3) is None
    assert not repo.complete_chunk(factory, work, results, None)
    with factory() as s:
        j = s.get_one(Job, job.id)
        assert (j.state, j.succeeded, j.failed, j.chunks_done) == ("running", 2, 1, 1)
    work2 = repo.claim_chunk(factory, job.id, 1, max_attempts=3)
    assert work2 is not None
    # The same chunk delivered twice while running: only one completion counts.
    dup = repo.claim_chunk(factory, job.id, 1, max_attempts=3)
    assert dup is not None
    done = {item_id: ({"label": "b"}, None) for item_id, _ in work2.items}
    assert repo.complete_chunk(factory, work2, done, None)
    assert not repo.complete_chunk(factory, dup, done, None)
    with factory() as s:
        j = s.get_one(Job, job.id)
        assert (j.state, j.succeeded, j.failed) == ("succeeded", 4, 1)
        assert j.started_at is not None and j.finished_at is not None


def test_redelivery_cap_fails_items_instead_of_looping(factory: Any) -> None:
    job, _ = _job(factory, _items(2), chunk_size=2)
    for _ in range(2):
        assert repo.claim_chunk(factory, job.id, 0, max_attempts=2) is not None  # worker "dies"
    assert repo.claim_chunk(factory, job.id, 0, max_attempts=2) is None
    with factory() as s:
        j = s.get_one(Job, job.id)
        assert (j.state, j.failed, j.error) == ("failed", 2, "every item failed")
        errors = s.scalars(select(Item.error).where(Item.job_id == job.id)).all()
        assert all("gave up after 2 attempts" in (e or "") for e in errors)


def test_cancel_stops_pending_chunks_and_keeps_finished_ones(factory: Any) -> None:
    job, _ = _job(factory, _items(9), chunk_size=3)
    running = repo.claim_chunk(factory, job.id, 0, max_attempts=3)
    assert running is not None
    cancelled = repo.cancel_job(factory, job.id)
    assert cancelled.state == "cancelling"
    assert repo.claim_chunk(factory, job.id, 1, max_attempts=3) is None
    repo.complete_chunk(
        factory, running, {i: ({"label": "a"}, None) for i, _ in running.items}, None
    )
    with factory() as s:
        j = s.get_one(Job, job.id)
        assert (j.state, j.succeeded) == ("cancelled", 3)
        statuses = s.execute(
            select(Item.status, func.count()).where(Item.job_id == job.id).group_by(Item.status)
        ).all()
        assert dict(statuses) == {ItemStatus.succeeded: 3, ItemStatus.cancelled: 6}
        assert (
            s.scalar(select(func.count()).select_from(Chunk).where(Chunk.state == "cancelled")) == 2
        )
    with pytest.raises(Conflict):
        repo.cancel_job(factory, job.id)


def test_idempotency_key_returns_the_first_job(factory: Any) -> None:
    job, _ = _job(factory, _items(1), key="abc")
    classifier, _ = repo.create_classifier(factory, parse_spec(SPEC))
    again, created = repo.start_job(factory, classifier, "m", 3, None, "abc")
    assert not created and again.id == job.id


def test_results_iterate_in_input_order_across_pages(factory: Any) -> None:
    job, _ = _job(factory, _items(25), chunk_size=10)
    ids = [i.custom_id for i in repo.iter_items(factory, job.id, batch=7)]
    assert ids == [f"c{i}" for i in range(25)]
    assert [i.idx for i in repo.iter_items(factory, job.id, after_idx=20, limit=3)] == [21, 22, 23]


def test_api_keys_are_stored_hashed(factory: Any) -> None:
    with factory() as s:
        assert not repo.any_api_keys(s)
    key = repo.create_api_key(factory, "ci")
    with factory() as s:
        assert repo.any_api_keys(s) and repo.check_api_key(s, key)
        assert not repo.check_api_key(s, key + "x")
        from db.models import ApiKey

        assert key not in {k.key_hash for k in s.scalars(select(ApiKey))}
