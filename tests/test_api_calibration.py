"""Calibration through the API: gold labels, fitting as a task, activation, results and
metrics under any calibration, and the worker applying the active one."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from scipy.special import softmax

from labelq import metrics
from tests.conftest import SHARED_DATA

SPEC = {
    "name": "api-test",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good"], "negative": " negative"},
}


def _sst2(n: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    lines = (SHARED_DATA / "sst2" / "stsa.binary.dev").read_text(encoding="utf-8").splitlines()[:n]
    items, gold = [], {}
    for i, line in enumerate(lines):
        label, text = line.split(" ", 1)
        items.append({"custom_id": f"s{i}", "text": text})
        gold[f"s{i}"] = "positive" if label == "1" else "negative"
    return items, gold


def _all(c: Any, job_id: str, **params: Any) -> list[dict[str, Any]]:
    text = c.get(f"/v1/jobs/{job_id}/results", params={"format": "jsonl", **params}).text
    return [json.loads(line) for line in text.splitlines()]


def test_calibration_flow(client: Any) -> None:
    c, _ = client
    c.post("/v1/classifiers", json=SPEC)
    items, gold = _sst2(300)
    job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
    assert job["state"] == "succeeded"

    # Gold labels: bad entries are reported, the rest stored.
    report = c.post(
        f"/v1/jobs/{job['id']}/labels", json={**gold, "nope": "positive", "s0x": "maybe"}
    ).json()
    assert report["accepted"] == 300
    reasons = sorted(r["error"][:20] for r in report["rejected"])
    assert len(reasons) == 2 and any("unknown label" in r for r in reasons)
    jsonl = "\n".join(json.dumps({"custom_id": k, "label": v}) for k, v in list(gold.items())[:3])
    r = c.post(
        f"/v1/jobs/{job['id']}/labels",
        content=jsonl + "\n{bad",
        headers={"Content-Type": "application/x-ndjson"},
    ).json()
    assert r["accepted"] == 3 and r["rejected"][0]["line"] == 4

    # Fit temperature scaling as a task; metrics before and after on the held-out share.
    row = c.post(
        "/v1/classifiers/api-test/calibrations",
        json={"method": "temperature", "job_id": job["id"], "holdout": 0.3},
    ).json()
    assert row["status"] == "fitting"
    row = c.get(f"/v1/classifiers/api-test/calibrations/{row['id']}").json()
    assert row["status"] == "ready", row
    assert row["fitted_on"]["n_holdout"] == 90 and row["fitted_on"]["n_fit"] == 210
    assert {"before", "after"} <= set(row["metrics"]) and row["metrics"]["after"]["n"] == 90
    temperature = row["params"]["temperature"]
    assert c.post(f"/v1/classifiers/api-test/calibrations/{row['id']}/activate").json()["active"]

    # Past results as stored (uncalibrated), and under the calibration, recomputed.
    stored = _all(c, job["id"])
    assert all(r.get("calibration") is None for r in stored)
    under = _all(c, job["id"], calibration=str(row["id"]))
    active = _all(c, job["id"], calibration="active")
    assert under == active
    for raw, cal in zip(stored[:20], under[:20], strict=True):
        z = np.log([raw["probs"]["positive"], raw["probs"]["negative"]])
        want = softmax(z / temperature)
        assert cal["probs"]["positive"] == pytest.approx(want[0], abs=1e-9)
        assert cal["calibration"] == {"id": row["id"], "method": "temperature"}
        assert cal["logprobs"] == raw["logprobs"] and cal["energy"] == raw["energy"]
        assert cal["gold_label"] == gold[cal["custom_id"]]

    # New results are written under the active calibration, and say so.
    job2 = c.post("/v1/jobs", json={"classifier": "api-test", "items": items[:20]}).json()
    new = _all(c, job2["id"])
    assert all(r["calibration"] == {"id": row["id"], "method": "temperature"} for r in new)
    raw2 = _all(c, job2["id"], calibration="none")
    assert all(r["calibration"] is None for r in raw2)
    assert new[0]["probs"] == pytest.approx(under[0]["probs"])

    # Metrics for dashboards, under any calibration.
    m = c.get(f"/v1/jobs/{job['id']}/metrics", params={"calibration": "none", "bins": 10}).json()
    assert m["metrics"]["n"] == 300 and len(m["reliability"]) == 10
    probs = np.array([[r["probs"]["positive"], r["probs"]["negative"]] for r in stored])
    y = np.array([0 if gold[r["custom_id"]] == "positive" else 1 for r in stored])
    assert m["metrics"]["ece"] == pytest.approx(metrics.ece(probs, y, 10))

    # Conformal sets: every result then carries a label set.
    conf = c.post(
        "/v1/classifiers/api-test/calibrations",
        json={"method": "conformal", "job_id": job["id"], "options": {"alpha": 0.2}},
    ).json()
    conf = c.get(f"/v1/classifiers/api-test/calibrations/{conf['id']}").json()
    assert conf["status"] == "ready" and conf["metrics"]["coverage"] is not None
    with_sets = _all(c, job["id"], calibration=str(conf["id"]))
    assert all(set(r["label_set"]) <= {"positive", "negative"} for r in with_sets)
    m = c.get(f"/v1/jobs/{job['id']}/metrics", params={"calibration": str(conf["id"])}).json()
    assert m["set_coverage"] >= 0.7 and m["mean_set_size"] >= 1
    csv_text = c.get(
        f"/v1/jobs/{job['id']}/results", params={"format": "csv", "calibration": str(conf["id"])}
    ).text
    assert "label_set" in csv_text.splitlines()[0]

    # Label-free methods: contextual (scores content-free inputs) and batch.
    ctx = c.post("/v1/classifiers/api-test/calibrations", json={"method": "contextual"}).json()
    ctx = c.get(f"/v1/classifiers/api-test/calibrations/{ctx['id']}").json()
    assert ctx["status"] == "ready" and len(ctx["params"]["p_cf"]) == 2
    assert ctx["params"]["content_free_inputs"] == ["N/A", "", "[MASK]"]
    batch = c.post(
        "/v1/classifiers/api-test/calibrations", json={"method": "batch", "job_id": job["id"]}
    ).json()
    batch = c.get(f"/v1/classifiers/api-test/calibrations/{batch['id']}").json()
    assert batch["status"] == "ready"
    rows = _all(c, job["id"], calibration=str(batch["id"]))
    z = np.log([[r["probs"]["positive"], r["probs"]["negative"]] for r in stored])
    want = softmax(z - z.mean(axis=0), axis=1)
    assert rows[5]["probs"]["positive"] == pytest.approx(want[5, 0], abs=1e-9)

    # Isotonic: fitted (with a warning under 1000 examples); vector scaling too.
    iso = c.post(
        "/v1/classifiers/api-test/calibrations", json={"method": "isotonic", "job_id": job["id"]}
    ).json()
    iso = c.get(f"/v1/classifiers/api-test/calibrations/{iso['id']}").json()
    assert iso["status"] == "ready" and "1000" in iso["metrics"]["warnings"][0]

    listed = c.get("/v1/classifiers/api-test/calibrations").json()
    assert [x["method"] for x in listed] == [
        "temperature",
        "conformal",
        "contextual",
        "batch",
        "isotonic",
    ]
    assert [x["active"] for x in listed] == [True, False, False, False, False]
    c.post(f"/v1/classifiers/api-test/calibrations/{iso['id']}/activate")
    listed = c.get("/v1/classifiers/api-test/calibrations").json()
    assert [x["active"] for x in listed] == [False, False, False, False, True]


def test_calibration_errors(client: Any) -> None:
    c, _ = client
    c.post("/v1/classifiers", json=SPEC)
    items, _ = _sst2(12)
    job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
    r = c.post(
        "/v1/classifiers/api-test/calibrations", json={"method": "magic", "job_id": job["id"]}
    )
    assert r.status_code == 422 and r.json()["field"] == "method"
    r = c.post("/v1/classifiers/api-test/calibrations", json={"method": "temperature"})
    assert r.status_code == 422 and r.json()["field"] == "job_id"
    # No gold labels: the fit fails with a reason, and cannot be activated.
    row = c.post(
        "/v1/classifiers/api-test/calibrations", json={"method": "temperature", "job_id": job["id"]}
    ).json()
    row = c.get(f"/v1/classifiers/api-test/calibrations/{row['id']}").json()
    assert row["status"] == "failed" and "gold labels" in row["error"]
    r = c.post(f"/v1/classifiers/api-test/calibrations/{row['id']}/activate")
    assert r.status_code == 409
    # Batch calibration needs no gold labels: it fits on every scored item of the job.
    batch = c.post(
        "/v1/classifiers/api-test/calibrations", json={"method": "batch", "job_id": job["id"]}
    ).json()
    batch = c.get(f"/v1/classifiers/api-test/calibrations/{batch['id']}").json()
    assert batch["status"] == "ready", batch
    assert batch["fitted_on"]["n_fit"] == 12 and batch["metrics"]["after"] is None
    r = c.get(f"/v1/jobs/{job['id']}/results", params={"calibration": "x"})
    assert r.status_code == 422 and r.json()["field"] == "calibration"
    r = c.get(f"/v1/jobs/{job['id']}/metrics")
    assert r.status_code == 409 and r.json()["field"] == "labels"
