"""A calibration's fit as a task (service/calibrations.py) on the fake backend: a lost fit is
sent again, a fit whose worker died is retried a bounded number of times, a fit past its
deadline fails, and a fit reads a job's scores a page at a time."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import calibrations as calibration_rows
from db import workers
from db.classifiers import store_version
from db.models import Calibration, utcnow
from labelq.backends.fake import FakeBackend
from labelq.scoring import Item, Scorer
from labelq.settings import Settings
from labelq.spec import parse_spec
from service import calibrations, ingest, labels
from service.calibrations import CalibrationRequest
from service.chunks import ChunkRunner
from service.dispatch import queue_for
from service.reconcile import sweep
from tests.conftest import Recorder, system, tenant_ctx

SPEC = {
    "name": "fits",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}
Factory = sessionmaker[Session]


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"model": "fake", "chunk_size": 1000, **overrides})


def _scorer(_: str) -> Scorer:
    return Scorer(FakeBackend())


def _contextual(factory: Factory, settings: Settings, recorder: Recorder) -> int:
    with factory.begin() as s:
        store_version(s, parse_spec(SPEC), tenant="default")
    ctx = tenant_ctx(factory, settings, recorder)
    return calibrations.request_fit(ctx, "fits", CalibrationRequest(method="contextual")).id


def _row(factory: Factory, calibration_id: int) -> Calibration:
    with factory() as s:
        return s.get_one(Calibration, calibration_id)


def _backdate(factory: Factory, calibration_id: int, **seconds: float) -> None:
    values = {column: utcnow() - timedelta(seconds=ago) for column, ago in seconds.items()}
    with factory.begin() as s:
        s.execute(update(Calibration).where(Calibration.id == calibration_id).values(**values))


def test_a_lost_fit_is_sent_again_once_a_period_where_a_worker_serves(factory: Factory) -> None:
    settings = _settings()
    recorder = Recorder()
    fit_id = _contextual(factory, settings, recorder)
    assert recorder.fits == [fit_id] and _row(factory, fit_id).dispatched_at is not None
    ctx = system(factory, settings, recorder)
    _backdate(factory, fit_id, dispatched_at=settings.stall_after + 1)  # and lost
    assert sweep(ctx).fits_sent == 0, "no worker serves its queue: its task waits there"
    with factory.begin() as s:
        workers.beat(s, "w1", queue_for("fake"), "fake")
    assert sweep(ctx).fits_sent == 1 and recorder.fits == [fit_id, fit_id]
    assert sweep(ctx).fits_sent == 0, "sent again: not once more within the stall period"
    calibrations.fit(ctx, _scorer, fit_id)
    assert _row(factory, fit_id).status == "ready"
    calibrations.fit(ctx, _scorer, fit_id)  # the second copy of its task: nothing to do
    row = _row(factory, fit_id)
    assert (row.status, row.attempts, row.lease_expires_at) == ("ready", 1, None)


def test_a_fit_whose_worker_died_is_fitted_again_a_bounded_number_of_times(
    factory: Factory,
) -> None:
    settings = _settings(max_chunk_attempts=2)
    recorder = Recorder()
    fit_id = _contextual(factory, settings, recorder)
    ctx = system(factory, settings, recorder)
    with factory.begin() as s:
        workers.beat(s, "w1", queue_for("fake"), "fake")
    for attempt in (1, 2):
        with factory.begin() as s:  # a worker claims it, then dies
            assert calibration_rows.claim_fit(s, fit_id, lease_seconds=60, max_attempts=2)
        calibrations.fit(ctx, _scorer, fit_id)  # a copy meets the live lease: no second fit
        assert _row(factory, fit_id).attempts == attempt
        _backdate(factory, fit_id, lease_expires_at=1, dispatched_at=settings.stall_after + 1)
        assert sweep(ctx).fits_sent == 1
    calibrations.fit(ctx, _scorer, fit_id)
    row = _row(factory, fit_id)
    assert row.status == "failed" and "gave up after 2 attempts" in (row.error or "")


def test_a_fit_past_its_deadline_fails(factory: Factory) -> None:
    settings = _settings(job_expires_after=3600)
    fit_id = _contextual(factory, settings, Recorder())
    ctx = system(factory, settings, Recorder())
    assert sweep(ctx).fits_expired == []
    _backdate(factory, fit_id, created_at=3601)
    assert sweep(ctx).fits_expired == [fit_id]
    row = _row(factory, fit_id)
    assert row.status == "failed" and (row.error or "").startswith("expired: not fitted")
    calibrations.fit(ctx, _scorer, fit_id)  # its task, delivered late: nothing to do
    assert _row(factory, fit_id).status == "failed"


def test_a_fit_reads_every_page_of_a_jobs_scores(factory: Factory) -> None:
    """2,500 scored items, 2,100 of them labelled: the fit (read a page at a time) sees each
    labelled item once and none twice."""
    settings = _settings()
    with factory.begin() as s:
        store_version(s, parse_spec(SPEC), tenant="default")
    ctx = tenant_ctx(factory, settings, Recorder())
    texts = [f"a {'good' if i % 3 else 'bad'} film number {i}" for i in range(2500)]
    items = [Item(custom_id=f"c{i}", fields={"text": t}, line=i + 1) for i, t in enumerate(texts)]
    job_id = ingest.submit(ctx, ingest.JobRequest(classifier="fits"), items)
    runner = ChunkRunner(system(factory, settings), _scorer, "w")
    assert all(runner.run(job_id, seq) for seq in range(3))
    gold = [
        {"custom_id": f"c{i}", "label": "positive" if i % 3 else "negative"} for i in range(2100)
    ]
    body = "\n".join(json.dumps(g) for g in gold).encode()
    assert labels.set_labels(ctx, job_id, body, True).accepted == 2100
    request = CalibrationRequest(method="temperature", job_id=job_id, holdout=0.2)
    fit_id = calibrations.request_fit(ctx, "fits", request).id
    calibrations.fit(system(factory, settings), _scorer, fit_id)
    row = _row(factory, fit_id)
    assert row.status == "ready", row.error
    assert row.fitted_on["labelled_items"] == 2100
    assert row.fitted_on["n_fit"] + row.fitted_on["n_holdout"] == 2100
