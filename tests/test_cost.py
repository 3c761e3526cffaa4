"""What scoring costs: engine time charged fairly between the calls that share one engine, and
prompt tokens, per job (status) and per tenant and classifier (/metrics), money with a price."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import chunks as chunk_service
from tests.conftest import make_client
from tests.test_api_calibration import _sst2
from tests.test_dashboard import NAME, SPEC


def test_calls_at_once_share_the_engines_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A from 0 to 10 s, B from 4 to 6 s: alone for 8 s, together for 2 s. A pays 8 + 1, B 1:
    10 s in all, the time the engine was busy, not the 12 s of their wall times."""
    now = [0.0]
    monkeypatch.setattr(chunk_service.time, "monotonic", lambda: now[0])
    meter = chunk_service.EngineMeter()
    a = meter.start()
    now[0] = 4.0
    b = meter.start()
    now[0] = 6.0
    b_paid = meter.stop(b)
    now[0] = 10.0
    a_paid = meter.stop(a)
    assert (a_paid, b_paid) == pytest.approx((9.0, 1.0))
    now[0] = 20.0  # idle time is nobody's
    c = meter.start()
    now[0] = 21.0
    assert meter.stop(c) == pytest.approx(1.0)


def _series(c: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(c.get("/metrics").text)
        for s in family.samples
        if s.name == name
    }


def test_a_jobs_cost_is_its_engine_time_and_prompt_tokens(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer, engine_hour_price=2.5)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        jobs = []
        for part in (_sst2(30)[0], _sst2(50)[0][30:]):
            job = c.post("/v1/jobs", json={"classifier": NAME, "items": part}).json()
            jobs.append(c.get(f"/v1/jobs/{job['id']}").json())
        total_seconds = total_tokens = 0.0
        for job in jobs:
            rows = c.get(f"/v1/jobs/{job['id']}/results", params={"limit": 1000}).json()["data"]
            cost = job["cost"]
            assert cost["prompt_tokens"] == sum(r["prompt_tokens"] for r in rows) > 0
            assert cost["engine_seconds"] > 0
            assert cost["engine_ms_per_item"] == pytest.approx(
                1000 * cost["engine_seconds"] / job["succeeded"]
            )
            assert cost["price"] == pytest.approx(cost["engine_seconds"] / 3600 * 2.5)
            total_seconds += cost["engine_seconds"]
            total_tokens += cost["prompt_tokens"]
        tenant = ()  # one total: /metrics names no tenant without the classifier labels
        assert _series(c, "labelq_prompt_tokens_total") == {tenant: total_tokens}
        assert _series(c, "labelq_engine_seconds_total")[tenant] == pytest.approx(total_seconds)
        assert _series(c, "labelq_costed_items_total") == {tenant: 50}
        assert _series(c, "labelq_engine_cost_total")[tenant] == pytest.approx(
            total_seconds / 3600 * 2.5
        )
