"""Drift alarms: a monitor's checks over its window, signals raised and cleared with one alarm
each way (into the webhook outbox), /metrics, tenant erasure, and who may set one."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from db.models import DriftMonitor, WebhookDelivery
from labelq.settings import Settings
from service import reconcile
from tests.conftest import create_key, make_client, system
from tests.test_dashboard import DASH, _seed

HOOK = "https://hooks.example.com/drift"


def _sweep(factory: Any) -> reconcile.SweepReport:
    return reconcile.sweep(system(factory, Settings(drift_every=0.001)))


def _deliveries(factory: Any) -> list[tuple[str, dict[str, Any]]]:
    with factory() as s:
        rows = s.execute(
            select(WebhookDelivery.event, WebhookDelivery.payload).order_by(WebhookDelivery.id)
        ).all()
    return [(event, payload) for event, payload in rows if event.startswith("classifier.drift")]


def test_a_signal_crossing_its_threshold_sends_one_alarm_each_way(
    factory: Any, fake_scorer: Any
) -> None:
    with _seed(factory, fake_scorer) as (c, ids):
        calm = {"label_psi": 0.25, "confidence_psi": 0.25, "estimated_accuracy_drop": 0.5}
        body = {"thresholds": calm, "window_hours": 1, "min_items": 10, "webhook_url": HOOK}
        made = c.put(f"{DASH}/drift", json=body)
        assert made.status_code == 200, made.text
        assert made.json()["state"] is None
        assert _sweep(factory).drift_checked == 1
        state = c.get(f"{DASH}/drift").json()["state"]
        assert state["n"] == 200  # the last hour: job `new` only (`old` is two days old)
        assert state["calibration"] == ids["calibration"]
        assert not any(s["raised"] for s in state["signals"].values())
        assert _deliveries(factory) == []

        touchy = {**calm, "label_psi": 0.0, "mean_confidence_shift": 0.0}
        c.put(f"{DASH}/drift", json={**body, "thresholds": touchy})
        _sweep(factory)
        _sweep(factory)  # still raised: no second alarm
        sent = _deliveries(factory)
        assert [event for event, _ in sent] == ["classifier.drift"]
        assert sent[0][1]["raised"] == ["label_psi", "mean_confidence_shift"]
        assert sent[0][1]["signals"]["label_psi"]["value"] > 0
        metrics = c.get("/metrics").text
        assert "labelq_drift_alarms 2.0" in metrics

        c.put(f"{DASH}/drift", json=body)
        _sweep(factory)
        sent = _deliveries(factory)
        assert [event for event, _ in sent] == ["classifier.drift", "classifier.drift_cleared"]
        assert sent[1][1]["cleared"] == ["label_psi", "mean_confidence_shift"]
        assert "labelq_drift_alarms 0.0" in c.get("/metrics").text

        quiet = c.put(f"{DASH}/drift", json={**body, "min_items": 1000})
        assert quiet.status_code == 200
        _sweep(factory)
        assert "under min_items" in c.get(f"{DASH}/drift").json()["state"]["note"]


def test_who_may_set_a_monitor_and_where_it_may_send(factory: Any, fake_scorer: Any) -> None:
    from tests.test_erase import CLASSIFIER

    c, _ = make_client(factory, fake_scorer, no_auth=False)
    calibrate = {"Authorization": f"Bearer {create_key(factory, 'a', 'acme')}"}
    submit = {"Authorization": f"Bearer {create_key(factory, 's', 'acme', ('submit', 'read'))}"}
    other = {"Authorization": f"Bearer {create_key(factory, 'o', 'bolt')}"}
    path = "/v1/classifiers/news/drift"
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER, headers=calibrate).status_code == 201
        assert c.put(path, json={}, headers=submit).status_code == 403
        assert c.put(path, json={}, headers=other).status_code == 404  # not bolt's classifier
        inside = c.put(path, json={"webhook_url": "http://127.0.0.1:9/x"}, headers=calibrate)
        assert inside.status_code == 422 and inside.json()["field"] == "webhook_url"
        assert c.put(path, json={"webhook_url": HOOK}, headers=calibrate).status_code == 200
        assert c.get(path, headers=other).status_code == 404
        assert c.get(path, headers=submit).json()["webhook_url"] == HOOK
        assert c.delete(path, headers=calibrate).status_code == 204
        assert c.get(path, headers=calibrate).status_code == 404


def test_erasing_a_tenant_removes_its_monitors(factory: Any, fake_scorer: Any) -> None:
    from service import erase
    from tests.conftest import tenant_ctx
    from tests.test_erase import CLASSIFIER

    c, _ = make_client(factory, fake_scorer)
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        assert c.put("/v1/classifiers/news/drift", json={}).status_code == 200
    erase.erase_tenant(tenant_ctx(factory, Settings(), tenant="default"), wait=5)
    with factory() as s:
        assert s.scalars(select(DriftMonitor)).all() == []
