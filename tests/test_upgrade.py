"""Upgrades that never stop the service: backfills outside the schema steps, resumable; the
compatible range of schema revisions; this code on its oldest schema; rows an older release
writes during a rollout reaching the dashboard and /metrics. (A previous release's worker
against the upgraded database: `tests/test_previous_release.py`.)"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from db import backfills
from db import erase as erase_rows
from db.migrate import OLDEST_SCHEMA, compatibility, require_current, upgrade
from db.models import ArchivedItem, Erase, Job, JobItem, ScoredCount
from labelq.errors import LabelqError
from labelq.settings import Settings
from service import reconcile
from tests.conftest import engine_at, make_client, system
from tests.test_api_calibration import _sst2
from tests.test_dashboard import DASH, NAME, SPEC, _classifier_series, _seed
from tests.test_erase import _rounded

COLUMNS = (
    JobItem.id,
    JobItem.classifier_id,
    JobItem.predicted,
    JobItem.correct,
    JobItem.confidence,
    JobItem.brier,
    JobItem.scored_at,
)


def _dashboard_rows(factory: sessionmaker[Session]) -> list[Any]:
    with factory() as s:
        return list(s.execute(select(*COLUMNS).order_by(JobItem.id)).all())


def _same_rows(after: list[Any], before: list[Any]) -> None:
    assert len(after) == len(before) == 500
    for now, then in zip(after, before, strict=True):
        assert tuple(now[:4]) == tuple(then[:4])
        assert tuple(now[4:6]) == pytest.approx(tuple(then[4:6]))
        assert (now[6] is None) == (then[6] is None)


def test_an_upgrade_cut_off_mid_backfill_completes_on_a_second_run(
    factory: sessionmaker[Session],
    db_url: str,
    fake_scorer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From 0004 (before the dashboard's columns) to the head: the schema steps add the columns
    and the backfill fills 500 rows in batches of 100. Cut off after two batches, the database
    is at the head with 200 rows filled and exactly those counted; the next upgrade fills the
    other 300 and everything equals what the writers had stored."""
    from alembic import command

    from db.migrate import alembic_config

    with _seed(factory, fake_scorer) as (c, _):
        before = _dashboard_rows(factory)
        counted = _classifier_series(c)
        factory.kw["bind"].dispose()
        command.downgrade(alembic_config(db_url), "0004")

        real = backfills.fill_scored_columns
        calls = []

        def cut_off(s: Session, batch: int) -> int:
            calls.append(batch)
            if len(calls) == 3:
                raise KeyboardInterrupt("the operator pressed Ctrl-C")
            return real(s, batch)

        monkeypatch.setattr(backfills, "fill_scored_columns", cut_off)
        with pytest.raises(KeyboardInterrupt):
            upgrade(db_url, batch=100)
        monkeypatch.setattr(backfills, "fill_scored_columns", real)
        assert require_current(db_url) is None  # the schema steps all done
        with factory() as s:
            assert backfills.unfilled_scored(s) == 300
            assert s.scalar(select(func.sum(ScoredCount.count))) == 200  # counted = filled
        assert upgrade(db_url, batch=100) == 300
        assert upgrade(db_url, batch=100) == 0
        _same_rows(_dashboard_rows(factory), before)
        recounted = _classifier_series(c)
        assert recounted.keys() == counted.keys()
        for key, value in counted.items():
            assert recounted[key] == pytest.approx(value), key


def test_rows_an_older_release_writes_reach_the_dashboard_through_the_sweep(
    factory: sessionmaker[Session], fake_scorer: Any
) -> None:
    """A worker of a release before the dashboard's columns (still running while pods roll)
    stores results as JSON only and counts nothing. The reconciler's sweep fills and counts
    them, within its budget a sweep, until none is left."""
    with _seed(factory, fake_scorer) as (c, ids):
        before = _dashboard_rows(factory)
        counted = _classifier_series(c)
        reliability = c.get(f"{DASH}/reliability", params={"job": ids["new"]}).json()
        with factory() as s:  # every result as such a worker leaves it
            s.execute(
                update(JobItem).values(
                    classifier_id=None,
                    predicted=None,
                    confidence=None,
                    correct=None,
                    brier=None,
                    scored_at=None,
                )
            )
            s.execute(delete(ScoredCount))
            s.commit()
        assert c.get(f"{DASH}/reliability", params={"job": ids["new"]}).json()["n"] == 0
        ctx = system(factory, Settings(backfill_per_sweep=300, backfill_batch=64))
        assert reconcile.sweep(ctx).backfilled == 300
        assert reconcile.sweep(ctx).backfilled == 200
        assert reconcile.sweep(ctx).backfilled == 0
        after = _dashboard_rows(factory)
        assert [row[:4] for row in after] == [row[:4] for row in before]
        again = c.get(f"{DASH}/reliability", params={"job": ids["new"]}).json()
        assert _rounded(again) == _rounded(reliability)
        recounted = _classifier_series(c)
        assert recounted == pytest.approx(counted)


def test_a_result_that_is_not_an_object_leaves_the_backfill(
    factory: sessionmaker[Session], fake_scorer: Any
) -> None:
    """A stored result the backfill cannot read still gets its time and leaves the predicate,
    or every later batch would read it again."""
    c, _ = make_client(factory, fake_scorer)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        job_id = c.post("/v1/jobs", json={"classifier": NAME, "items": _sst2(3)[0]}).json()["id"]
    with factory() as s:
        s.execute(delete(ScoredCount))
        s.execute(
            update(JobItem)
            .where(JobItem.job_id == job_id)
            .values(status="succeeded", result="not an object", scored_at=None)
        )
        s.commit()
        assert backfills.fill_scored_columns(s, 10) == 3
        s.commit()
        assert backfills.fill_scored_columns(s, 10) == 0
        assert s.scalar(select(func.count()).select_from(ScoredCount)) == 0


# -- the compatible range -------------------------------------------------------------------------
def test_the_compatible_range() -> None:
    head = compatibility("0020", None).head
    assert compatibility(head, "0020").note is None and compatibility(head, None).error is None
    behind = compatibility(OLDEST_SCHEMA, None)
    assert behind.error is None and behind.note and "behind" in behind.note
    too_old = compatibility("0019", None)
    assert too_old.error and f"at least {OLDEST_SCHEMA}" in too_old.error
    # A newer release's schema that still serves this release's code (a rollback)...
    ahead = compatibility("0099", head)
    assert ahead.error is None and ahead.note and "newer than this code" in ahead.note
    # ...and one whose contract step dropped what this code uses.
    gone = compatibility("0099", "0098")
    assert gone.error and "needs code of revision 0098" in gone.error
    assert compatibility("0099", None).error  # newer, and says nothing: refused
    assert compatibility(None, None).error == "the database has no schema: run `labelq db upgrade`"


def test_require_current_reads_the_range_from_the_database(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'labelq.db'}"
    upgrade(url, "0019")
    with pytest.raises(LabelqError, match="needs at least 0020"):
        require_current(url)
    upgrade(url, OLDEST_SCHEMA)
    assert "behind this code" in (require_current(url) or "")
    upgrade(url)
    assert require_current(url) is None
    engine = engine_at(url)
    with engine.begin() as conn:  # as a later release leaves it
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    assert "newer than this code" in (require_current(url) or "")
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_compat SET oldest_code = '0098'"))
    engine.dispose()
    with pytest.raises(LabelqError, match="which a newer release made"):
        require_current(url)


def test_this_code_runs_on_its_oldest_schema(tmp_path: Any, fake_scorer: Any) -> None:
    """New pods may start before `labelq db upgrade` has run: on a database at `OLDEST_SCHEMA`
    this code scores a job, takes gold labels, fits and activates a calibration, serves the
    dashboard, /metrics and results, sweeps, and erases a job."""
    url = f"sqlite:///{tmp_path / 'labelq.db'}"
    upgrade(url, OLDEST_SCHEMA)
    engine = engine_at(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    c, _ = make_client(factory, fake_scorer, metrics_classifier_labels=True)
    with c:
        assert c.post("/v1/classifiers", json=SPEC).status_code == 201
        items, gold = _sst2(120)
        job = c.post("/v1/jobs", json={"classifier": NAME, "items": items}).json()
        assert job["state"] == "succeeded"
        assert c.get(f"/v1/jobs/{job['id']}").json()["cost"] is None  # no place for it yet
        c.post(f"/v1/jobs/{job['id']}/labels", json=gold)
        fit = c.post(
            f"{DASH}/calibrations",
            json={"method": "temperature", "job_id": job["id"], "activate": True},
        )
        assert fit.status_code == 202, fit.text
        fitted = c.get(f"{DASH}/calibrations/{fit.json()['id']}").json()
        assert (fitted["status"], fitted["active"]) == ("ready", True), fitted
        assert c.get(f"{DASH}/reliability", params={"job": job["id"]}).json()["n"] == 120
        assert _classifier_series(c)[("labelq_confidence_count", ())] == 120
        assert len(c.get(f"/v1/jobs/{job['id']}/results").json()["data"]) == 100
        reconcile.sweep(system(factory, Settings()))
        gone = c.delete(f"/v1/jobs/{job['id']}", params={"keep": "tombstone"})
        assert gone.status_code in (200, 202), gone.text
        # An erasure at the `items` level needs 0023's archive to keep the dashboard's
        # figures: before it, it waits (nothing deleted, nothing lost), then goes on.
        with factory() as s:
            row = s.get(Job, job["id"])
            assert row is not None and erase_rows.request(s, row, Erase.items)
            s.commit()
        ctx = system(factory, Settings())
        assert reconcile.sweep(ctx).erased.jobs_done == 0
        with factory() as s:
            assert s.scalar(select(func.count()).where(JobItem.job_id == job["id"])) == 120
        upgrade(url)
        assert reconcile.sweep(ctx).erased.jobs_done == 1
        with factory() as s:
            assert s.scalar(select(func.count()).select_from(ArchivedItem)) == 120
        assert c.get(f"{DASH}/reliability", params={"job": job["id"]}).json()["n"] == 120
    engine.dispose()


@pytest.mark.slow
def test_upgrades_started_at_once_run_one_after_the_other() -> None:
    """Every API pod runs `labelq db upgrade` as it starts (an init container): three at once
    on an empty PostgreSQL database all end well, the schema at the head, each revision once."""
    import threading

    from tests.test_pipelines import scratch_postgres

    with scratch_postgres() as url:
        errors: list[BaseException] = []

        def run() -> None:
            try:
                upgrade(url)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert errors == []
        assert require_current(url) is None
