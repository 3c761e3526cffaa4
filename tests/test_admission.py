"""Admission: what one tenant may have in flight (LABELQ_TENANT_MAX_JOBS, _ITEMS, and per
tenant LABELQ_TENANT_ADMISSION). A job past a limit is refused with 429, the limits and what is
in flight; nothing of it is stored, and other tenants are not held back."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from db.models import Job
from labelq.scoring import Item
from tests.conftest import create_key, make_client

CLASSIFIER = {
    "name": "news",
    "template": "{{ text }}",
    "labels": {"positive": " positive", "negative": " negative"},
}


def _job(n: int) -> dict[str, Any]:
    return {"classifier": "news", "items": [{"text": f"item {i}"} for i in range(n)]}


def test_a_tenant_at_its_limits_is_refused_and_others_are_not(factory: Any) -> None:
    c, _ = make_client(  # no scorer: jobs stay queued, in flight
        factory,
        None,
        no_auth=False,
        tenant_max_items=10,
        tenant_admission={"acme": {"jobs": 3}},
    )
    acme = {"Authorization": f"Bearer {create_key(factory, 'a', 'acme')}"}
    bolt = {"Authorization": f"Bearer {create_key(factory, 'b', 'bolt')}"}
    with c:
        for who in (acme, bolt):
            assert c.post("/v1/classifiers", json=CLASSIFIER, headers=who).status_code == 201
        first = c.post("/v1/jobs", json=_job(8), headers=acme)
        assert first.status_code == 202
        over = c.post("/v1/jobs", json=_job(3), headers=acme)
        assert over.status_code == 429 and over.headers["Retry-After"] == "30"
        body = over.json()
        assert body["field"] == "tenant" and "8 items waiting + 3" in body["error"]
        assert body["limits"] == {"jobs": 3, "items": 10}
        assert body["in_flight"] == {"jobs": 1, "items": 8}
        assert c.post("/v1/jobs", json=_job(2), headers=acme).status_code == 202  # 10: at it
        streamed = c.post(
            "/v1/jobs",
            content=b'{"text": "one more"}\n',
            params={"classifier": "news"},
            headers={**acme, "Content-Type": "application/x-ndjson"},
        )
        assert streamed.status_code == 429, "at the item limit, a stream is not admitted"
        assert c.post("/v1/jobs", json=_job(9), headers=bolt).status_code == 202, "bolt's own"
        retry = c.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=acme)
        assert retry.status_code == 200
        assert c.post("/v1/jobs", json=_job(1), headers=acme).status_code == 202
        assert c.post("/v1/jobs", json=_job(1), headers=acme).status_code == 202  # 3 jobs now
        jobs = c.post("/v1/jobs", json=_job(1), headers=acme)
        assert jobs.status_code == 429 and "3 unfinished jobs (limit 3)" in jobs.json()["error"]
    with factory() as s:
        stored = select(func.count()).select_from(Job).where(Job.tenant == "acme")
        assert s.scalar(stored) == 4, "a refused job leaves no row"


def test_submissions_at_once_never_pass_the_limits_together(factory: Any) -> None:
    """Twelve submissions of one tenant at the same moment, each of 30 items, against a limit
    of 100 items: each admission sees the jobs admitted before it (its declared items counted
    from the moment it is opened), so exactly three pass, whatever the interleaving; the other
    tenant's submissions meanwhile are not held to acme's limit."""
    import threading

    from labelq.errors import OverLimit
    from labelq.settings import Settings
    from service import classifiers, ingest
    from tests.conftest import tenant_ctx

    settings = Settings(model="tiny-model", tenant_max_items=100, tenant_max_jobs=1000)
    acme = tenant_ctx(factory, settings, tenant="acme")
    bolt = tenant_ctx(factory, settings, tenant="bolt")
    for ctx in (acme, bolt):
        classifiers.create(ctx, json.dumps(CLASSIFIER).encode(), "json")
    outcomes: list[str] = []
    start = threading.Barrier(14)

    def submit(ctx: Any) -> None:
        start.wait()
        try:
            ingest.submit(
                ctx,
                ingest.JobRequest(classifier="news", items=30),
                [Item(fields={"text": f"item {i}"}) for i in range(30)],
            )
            outcomes.append(f"{ctx.tenant} admitted")
        except OverLimit:
            outcomes.append(f"{ctx.tenant} refused")

    threads = [threading.Thread(target=submit, args=(acme,)) for _ in range(12)]
    threads += [threading.Thread(target=submit, args=(bolt,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["acme admitted"] * 3 + ["acme refused"] * 9 + ["bolt admitted"] * 2
    with factory() as s:
        totals = s.scalars(select(Job.total).where(Job.tenant == "acme")).all()
        assert sorted(totals) == [30, 30, 30]


def test_a_streamed_upload_counts_as_its_items_arrive(factory: Any) -> None:
    """A stream of unknown size is admitted while its tenant is under the item limit, and its
    items count as they are stored: a submission during the upload sees them."""
    from labelq.errors import OverLimit
    from labelq.settings import Settings
    from service import classifiers, ingest
    from tests.conftest import tenant_ctx

    ctx = tenant_ctx(factory, Settings(model="tiny-model", tenant_max_items=100), tenant="acme")
    classifiers.create(ctx, json.dumps(CLASSIFIER).encode(), "json")
    opened = ingest.open_job(ctx, ingest.JobRequest(classifier="news"))
    assert opened.submission is not None
    ingest.add(ctx, opened.submission, [Item(fields={"text": f"{i}"}) for i in range(95)])
    try:
        ingest.submit(
            ctx,
            ingest.JobRequest(classifier="news", items=10),
            [Item(fields={"text": "x"})] * 10,
        )
    except OverLimit as exc:
        assert "95 items waiting + 10" in str(exc)
    else:
        raise AssertionError("a job past the limit was admitted during another's upload")
    ingest.seal(ctx, opened.submission)
    with factory() as s:
        assert s.scalars(select(Job.total).where(Job.tenant == "acme")).all() == [95]
