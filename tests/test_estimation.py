"""Accuracy without labels (`labelq.estimation`, GET .../estimated-performance): the interval's
coverage on simulated calibrated traffic, PSI, the validity signal, and the endpoint against
what its items' own results say, in SQL and in the streamed pass, on both dialects."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from labelq import estimation as est
from tests.conftest import create_key, make_client
from tests.test_dashboard import DASH, NAME, SPEC, seeded_database
from tests.test_erase import _rounded


def _sums(conf: np.ndarray, correct: np.ndarray | None = None) -> est.Sums:
    return est.Sums(
        n=len(conf),
        conf_sum=float(conf.sum()),
        conf_sq_sum=float((conf**2).sum()),
        labelled=0 if correct is None else len(correct),
        labelled_conf_sum=0.0 if correct is None else float(conf.sum()),
        correct=0 if correct is None else int(correct.sum()),
    )


def test_the_interval_covers_the_realised_accuracy_of_calibrated_traffic() -> None:
    """Confidences that are calibrated by construction (each item right with probability its
    confidence): over 400 batches of 300 items the 95% interval (sampling part alone) holds
    the realised accuracy in 92-98% of them, and the estimate's mean error is about zero."""
    rng = np.random.default_rng(7)
    covered, errors = 0, []
    for _ in range(400):
        conf = 0.5 + 0.5 * rng.beta(2, 1.2, size=300)
        right = rng.random(300) < conf
        e = est.estimate(_sums(conf), allowance=None)
        assert e.low is not None and e.high is not None and e.accuracy is not None
        covered += e.low <= right.mean() <= e.high
        errors.append(e.accuracy - right.mean())
    assert 0.92 <= covered / 400 <= 0.98
    assert abs(float(np.mean(errors))) < 0.005


def test_overconfident_traffic_is_caught_by_the_calibrations_allowance() -> None:
    """The same traffic, but 10 points less accurate than it is confident: the sampling
    interval misses; an allowance from a held-out report with that gap covers it."""
    rng = np.random.default_rng(3)
    conf = 0.6 + 0.4 * rng.random(2000)
    right = rng.random(2000) < conf - 0.1
    plain = est.estimate(_sums(conf), allowance=None)
    assert plain.low is not None and not plain.low <= right.mean()
    held_out = {"n": 500, "accuracy": 0.70, "mean_confidence": 0.80, "ece": 0.1}
    allowed = est.allowance(held_out)
    assert allowed is not None and 0.1 < allowed < 0.15  # the gap plus its sampling error
    wide = est.estimate(_sums(conf), allowance=allowed)
    assert wide.low is not None and wide.high is not None
    assert wide.low <= right.mean() <= wide.high
    assert est.allowance({"n": 500, "accuracy": 0.7, "ece": 0.08}) == 0.08  # an older report
    assert est.allowance(None) is None and est.estimate(est.Sums(), None).accuracy is None


def test_psi_and_the_validity_signal() -> None:
    same = [10, 20, 30, 40]
    assert est.psi(same, same) == pytest.approx(0.0)
    assert est.psi(same, [40, 30, 20, 10]) > est.LARGE_PSI
    assert est.psi([], []) is None and est.psi([0, 0], [1, 2]) is None
    ref = ([0.0] * 10 + [5.0] * 10, {"positive": 50.0, "negative": 50.0}, 0.8)
    steady = est.validity(ref, ref, calibrated=True, reference_name="job x")
    assert (steady.shift, steady.reliable, steady.reasons) == ("none", True, [])
    moved = ([0.0] * 10 + [5.0] * 9 + [60.0], {"positive": 95.0, "negative": 5.0}, 0.97)
    shifted = est.validity(ref, moved, calibrated=True, reference_name="job x")
    assert shifted.shift == "large" and not shifted.reliable
    assert any("predicted-label" in r for r in shifted.reasons)
    assert shifted.mean_confidence_shift == pytest.approx(0.17)
    raw = est.validity(ref, ref, calibrated=False, reference_name=None)
    assert not raw.reliable and "no calibration" in raw.reasons[0]
    lost = est.validity(None, ref, calibrated=True, reference_name="job x")
    assert lost.shift == "unknown" and not lost.reliable


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dashboard's seeded database, with its sessions (the fit tests write to it)."""
    from labelq.backends.fake import FakeBackend
    from labelq.scoring import Scorer

    with seeded_database(request, tmp_path_factory, Scorer(FakeBackend())) as seeded:
        yield seeded


def _confidences(c: TestClient, job: str, calibration: str) -> list[dict[str, Any]]:
    rows = c.get(
        f"/v1/jobs/{job}/results", params={"calibration": calibration, "limit": 1000}
    ).json()
    return [r for r in rows["data"] if r["status"] == "succeeded"]


def test_the_estimate_is_the_mean_calibrated_confidence_in_sql_and_in_the_stream(
    seeded: Any,
) -> None:
    """Job `new` was stored under the active calibration (read in SQL); the whole classifier
    under it needs job `old`'s results recomputed (the streamed pass). Both equal the mean of
    the confidences the results endpoint serves under that calibration, and the interval holds
    the measured accuracy of the labelled items."""
    c, ids, _ = seeded
    new = c.get(f"{DASH}/estimated-performance", params={"job": ids["new"]}).json()
    assert new["basis"]["computed"] == "sql"
    assert new["calibration"]["id"] == ids["calibration"]
    assert new["calibration"]["fitted_on_job"] == ids["old"]
    rows = _confidences(c, ids["new"], "active")
    assert new["estimate"]["n"] == len(rows) == 200
    assert new["estimate"]["accuracy"] == pytest.approx(np.mean([r["confidence"] for r in rows]))
    measured = new["measured"]
    assert measured["labelled"] == 100
    right = [
        r["label"] == ids["gold"][r["custom_id"]] for r in rows if r["custom_id"] in ids["gold"]
    ]
    assert measured["accuracy"] == pytest.approx(np.mean(right[:100]))
    assert new["estimate"]["low"] <= measured["accuracy"] <= new["estimate"]["high"]
    assert new["estimate"]["calibration_allowance"] > 0
    assert new["validity"]["reliable"] is True, new["validity"]  # the same SST-2 traffic
    assert new["validity"]["label_psi"] is not None

    everything = c.get(f"{DASH}/estimated-performance").json()
    assert everything["basis"]["computed"] == "stream"
    both = rows + _confidences(c, ids["old"], "active")
    assert everything["estimate"]["n"] == 500
    assert everything["estimate"]["accuracy"] == pytest.approx(
        np.mean([r["confidence"] for r in both])
    )


def test_without_a_calibration_the_estimate_says_it_relies_on_none(seeded: Any) -> None:
    c, ids, _ = seeded
    raw = c.get(
        f"{DASH}/estimated-performance", params={"job": ids["old"], "calibration": "none"}
    ).json()
    assert raw["calibration"] is None and raw["validity"]["reliable"] is False
    assert "no calibration" in raw["validity"]["reasons"][0]
    stored = c.get(
        f"{DASH}/estimated-performance", params={"job": ids["new"], "calibration": "stored"}
    ).json()
    assert stored["calibration"]["id"] == ids["calibration"]  # what every item was stored under
    mixed = c.get(f"{DASH}/estimated-performance", params={"calibration": "stored"}).json()
    assert mixed["calibration"] is None and not mixed["validity"]["reliable"]
    assert "several calibrations" in mixed["validity"]["reasons"][0]  # old: none; new: one
    bad = c.get(f"{DASH}/estimated-performance", params={"level": 1.5})
    assert bad.status_code == 422 and bad.json()["field"] == "level"


def test_another_tenant_cannot_read_the_estimate(seeded: Any) -> None:
    _, ids, factory = seeded
    other = create_key(factory, "other", tenant="other", scopes=("read", "submit"))
    keyed, _ = make_client(factory, None, no_auth=False)
    with keyed:
        r = keyed.get(
            f"{DASH}/estimated-performance",
            params={"job": ids["new"]},
            headers={"Authorization": f"Bearer {other}"},
        )
    assert r.status_code == 404 and NAME in r.json()["error"]
    assert SPEC["name"] == NAME


def test_the_timeseries_puts_the_estimate_beside_the_measured_accuracy(seeded: Any) -> None:
    """Per bucket, under the active calibration: the estimate is the bucket's mean confidence,
    its interval holds it, and where labels exist `accuracy` stands beside it."""
    c, ids, _ = seeded
    points = c.get(
        f"{DASH}/timeseries",
        params={"calibration": "active", "metrics": "accuracy,mean_confidence,estimated_accuracy"},
    ).json()["points"]
    assert len(points) == 2  # job `old` two days ago, `new` today
    for p in points:
        assert p["estimated_accuracy"] == pytest.approx(p["mean_confidence"])
        assert p["estimated_low"] < p["estimated_accuracy"] < p["estimated_high"]
        assert p["accuracy"] is not None and p["labelled"] > 0
    whole = c.get(f"{DASH}/estimated-performance").json()["estimate"]
    # The bins' bound on sum c(1 - c) is an upper one: never narrower than the exact interval.
    new = c.get(f"{DASH}/estimated-performance", params={"job": ids["new"]}).json()["estimate"]
    assert points[-1]["estimated_high"] - points[-1]["estimated_low"] >= new["high"] - new["low"]
    assert whole["n"] == 500


def test_the_dashboard_splits_and_filters_by_the_engine_that_scored(
    factory: Any, fake_scorer: Any
) -> None:
    """Two engines (two fake builds) score one job each of one classifier: `engines` gives a
    row per fingerprint with that job's figures, and `fingerprint=` keeps one engine's items
    in every query (reliability and the estimate here), equal to filtering by its job."""
    from labelq.backends.fake import FakeBackend
    from labelq.scoring import Scorer
    from tests.test_api_calibration import _sst2

    c, dispatcher = make_client(factory, fake_scorer)
    other = Scorer(FakeBackend(max_model_len=2048))
    assert other.fingerprint != fake_scorer.fingerprint
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items, gold = _sst2(120)
        jobs = {}
        for engine, part in ((fake_scorer, items[:80]), (other, items[80:])):
            dispatcher.scorer = engine
            job = c.post("/v1/jobs", json={"classifier": NAME, "items": part}).json()
            c.post(
                f"/v1/jobs/{job['id']}/labels",
                json={i["custom_id"]: gold[i["custom_id"]] for i in part},
            )
            jobs[engine.fingerprint] = job["id"]
        split = c.get(f"{DASH}/engines").json()
        assert [(e["fingerprint"], e["n"], e["labelled"]) for e in split["engines"]] == [
            (fake_scorer.fingerprint, 80, 80),
            (other.fingerprint, 40, 40),
        ]
        assert "2 engines" in split["note"]
        for fingerprint, job_id in jobs.items():
            for path in ("reliability", "estimated-performance"):
                kept = c.get(f"{DASH}/{path}", params={"fingerprint": fingerprint}).json()
                by_job = c.get(f"{DASH}/{path}", params={"job": job_id}).json()
                # two queries' float sums may differ in the last digit on PostgreSQL
                assert _rounded(kept) == _rounded(by_job), path
            row = next(e for e in split["engines"] if e["fingerprint"] == fingerprint)
            r = c.get(f"{DASH}/reliability", params={"job": job_id}).json()
            assert row["accuracy"] == pytest.approx(r["accuracy"])
        none = c.get(f"{DASH}/reliability", params={"fingerprint": "0" * 16}).json()
        assert none["n"] == 0
