"""Admission: what one tenant may have in flight (LABELQ_TENANT_MAX_JOBS, _ITEMS, and per
tenant LABELQ_TENANT_ADMISSION). A job past a limit is refused with 429, the limits and what is
in flight; nothing of it is stored, and other tenants are not held back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from db.models import Job
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
