"""The dashboard's queries: each checked against `labelq.metrics` (or numpy, scipy, sklearn) on
the results the API serves, SQL against the streamed pass on the same rows, the migration that
fills the columns for old rows, and the Prometheus series."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import confusion_matrix
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db import dashboard as sums
from db.models import JobItem
from labelq import metrics
from labelq.dashboard import psi
from tests.conftest import make_client
from tests.test_api_calibration import _all, _sst2

# One completion per label: the fake backend then predicts both labels (with " good" beside
# " positive" it favours positive for nearly every input).
SPEC = {
    "name": "dash",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}
NAME = SPEC["name"]
LABELS = ["positive", "negative"]
DASH = f"/v1/classifiers/{NAME}"


@contextmanager
def _seed(
    factory: sessionmaker[Session], fake_scorer: Any
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """Job `old` (300 SST-2 items, uncalibrated, all gold-labelled, scored two days ago), a
    temperature calibration fitted on it and activated, then job `new` (200 items stored under
    that calibration, 100 of them gold-labelled)."""
    c, _ = make_client(factory, fake_scorer, metrics_classifier_labels=True)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items, gold = _sst2(500)
        old = c.post("/v1/jobs", json={"classifier": NAME, "items": items[:300]}).json()
        c.post(f"/v1/jobs/{old['id']}/labels", json={k: gold[k] for k in list(gold)[:300]})
        fit = c.post(
            f"{DASH}/calibrations",
            json={"method": "temperature", "job_id": old["id"], "activate": True},
        ).json()
        new = c.post("/v1/jobs", json={"classifier": NAME, "items": items[300:]}).json()
        assert (old["state"], new["state"]) == ("succeeded", "succeeded")
        c.post(f"/v1/jobs/{new['id']}/labels", json={k: gold[k] for k in list(gold)[300:400]})
        with factory() as s:
            s.execute(
                update(JobItem)
                .where(JobItem.job_id == old["id"])
                .values(scored_at=datetime.now(UTC) - timedelta(days=2))
            )
            s.commit()
        yield c, {"old": old["id"], "new": new["id"], "calibration": fit["id"], "gold": gold}


@contextlib.contextmanager
def seeded_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_scorer: Any
) -> Iterator[tuple[TestClient, dict[str, Any], sessionmaker[Session]]]:
    """A database of `request.param` (sqlite or postgresql) seeded by `_seed`, with sessions on
    it, emptied afterwards: one per module and backend where the tests only read it."""
    from db.migrate import upgrade
    from tests.conftest import _empty_postgres, engine_at

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'labelq.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    upgrade(url)
    if request.param == "postgresql":
        _empty_postgres(url)
    engine = engine_at(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    try:
        with _seed(factory, fake_scorer) as (c, ids):
            yield c, ids, factory
    finally:
        engine.dispose()
        if request.param == "postgresql":
            _empty_postgres(url)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, fake_scorer: Any
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """One seeded database per module and backend: the queries only read it."""
    with seeded_database(request, tmp_path_factory, fake_scorer) as (c, ids, _):
        yield c, ids


def _labelled(rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in rows if r.get("gold_label")]
    probs = np.array([[r["probs"][label] for label in LABELS] for r in rows])
    y = np.array([LABELS.index(r["gold_label"]) for r in rows])
    return probs, y


def _rows(c: TestClient, ids: dict[str, Any], calibration: str | None) -> list[dict[str, Any]]:
    params = {} if calibration is None else {"calibration": calibration}
    return _all(c, ids["old"], **params) + _all(c, ids["new"], **params)


@pytest.mark.parametrize("binning", ["width", "mass"])
@pytest.mark.parametrize("calibration", ["stored", "none", "active"])
def test_reliability_matches_the_metrics_of_the_served_results(
    seeded: tuple[TestClient, dict[str, Any]], calibration: str, binning: str
) -> None:
    c, ids = seeded
    got = c.get(f"{DASH}/reliability", params={"calibration": calibration, "binning": binning})
    assert got.status_code == 200, got.text
    r = got.json()
    probs, y = _labelled(_rows(c, ids, None if calibration == "stored" else calibration))
    assert r["n"] == len(y) == 400
    assert r["ece"] == pytest.approx(metrics.ece(probs, y, 15, binning), abs=1e-9)
    assert r["mce"] == pytest.approx(metrics.mce(probs, y, 15, binning), abs=1e-9)
    assert r["accuracy"] == pytest.approx(metrics.accuracy(probs, y))
    assert r["brier"] == pytest.approx(metrics.brier(probs, y), abs=1e-9)
    expected = metrics.reliability_bins(probs, y, 15, binning)
    assert [b["count"] for b in r["bins"]] == [b.count for b in expected]
    for got_bin, want in zip(r["bins"], expected, strict=True):
        assert got_bin["accuracy"] == pytest.approx(want.accuracy)
        assert got_bin["confidence"] == pytest.approx(want.confidence)
    # Stored results are aggregated in SQL; `none` and `active` each differ from how one of
    # the two jobs was stored, so they are recomputed in one pass and say so.
    want = "sql" if calibration == "stored" else "stream"
    assert r["basis"]["computed"] == want
    assert (r["basis"]["note"] is not None) == (want == "stream")


def test_a_calibration_every_result_was_stored_under_is_read_in_sql(
    seeded: tuple[TestClient, dict[str, Any]],
) -> None:
    c, ids = seeded
    for params in (
        {"calibration": "none", "job": ids["old"]},
        {"calibration": "active", "job": ids["new"]},
        {"calibration": str(ids["calibration"]), "job": ids["new"]},
    ):
        r = c.get(f"{DASH}/reliability", params=params).json()
        assert r["basis"]["computed"] == "sql", (params, r)
    rows = _all(c, ids["new"])
    probs, y = _labelled(rows)
    r = c.get(f"{DASH}/reliability", params={"calibration": "active", "job": ids["new"]}).json()
    assert r["n"] == 100 and r["ece"] == pytest.approx(metrics.ece(probs, y), abs=1e-9)


QUERIES = [
    ("reliability", {"bins": 10}),
    ("reliability", {"bins": 7, "binning": "mass"}),
    ("timeseries", {"bucket": "day"}),
    ("timeseries", {"bucket": "hour", "bins": 5}),
    ("confidence-histogram", {"bins": 12}),
    ("confusion", {}),
    ("label-distribution", {"bucket": "day"}),
    ("selective", {"thresholds": "0,0.5,0.55,0.6,0.9,1", "target_accuracy": 0.6}),
    ("compare", {"compare": "stored,none"}),
]


@pytest.mark.parametrize(("query", "params"), QUERIES, ids=[f"{q}-{p}" for q, p in QUERIES])
def test_sql_and_the_streamed_pass_agree(
    seeded: tuple[TestClient, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    query: str,
    params: dict[str, Any],
) -> None:
    """`none` over the uncalibrated job is read in SQL; forcing the streamed pass on the same
    rows gives the same answer."""
    c, ids = seeded
    params = {**params, "calibration": "none", "job": ids["old"]}
    in_sql = c.get(f"{DASH}/{query}", params=params).json()
    monkeypatch.setattr(sums, "calibrations_other_than", lambda *a: True)
    streamed = c.get(f"{DASH}/{query}", params=params).json()

    def without_basis(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_basis(v) for k, v in value.items() if k != "basis"}
        if isinstance(value, list):
            return [without_basis(v) for v in value]
        return round(value, 9) if isinstance(value, float) else value

    assert json.dumps(in_sql).count('"computed": "stream"') == 0
    assert '"stream"' in json.dumps(streamed)
    assert without_basis(in_sql) == without_basis(streamed)


def test_timeseries_buckets_and_windows(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    r = c.get(f"{DASH}/timeseries", params={"bucket": "day"}).json()
    points = r["points"]
    assert [p["volume"] for p in points] == [300, 200]
    assert [p["labelled"] for p in points] == [300, 100]
    assert [p["coverage"] for p in points] == [1.0, 0.5]
    for p, job in zip(points, ("old", "new"), strict=True):
        probs, y = _labelled(_all(c, ids[job]))
        assert p["accuracy"] == pytest.approx(metrics.accuracy(probs, y))
        assert p["ece"] == pytest.approx(metrics.ece(probs, y), abs=1e-9)
        assert p["brier"] == pytest.approx(metrics.brier(probs, y), abs=1e-9)
        conf = [row["confidence"] for row in _all(c, ids[job])]
        assert p["mean_confidence"] == pytest.approx(np.mean(conf))
    # `from` keeps the newer day only; a metric list keeps only those.
    since = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = c.get(f"{DASH}/timeseries", params={"from": since, "metrics": "volume"}).json()
    assert [set(p) for p in r["points"]] == [{"bucket", "volume", "labelled"}]
    assert r["points"][0]["volume"] == 200


def test_label_drift_against_a_reference_window(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    old_day = datetime.now(UTC) - timedelta(days=2)
    start = old_day.replace(hour=0, minute=0, second=0, microsecond=0)
    params = {
        "reference_from": start.isoformat(),
        "reference_to": (start + timedelta(days=1)).isoformat(),
    }
    r = c.get(f"{DASH}/label-distribution", params=params).json()
    shares = []
    for job in ("old", "new"):
        predicted = [row["label"] for row in _all(c, ids[job])]
        shares.append(np.array([predicted.count(label) / len(predicted) for label in LABELS]))
    first, second = r["buckets"]
    assert [first["shares"][label] for label in LABELS] == pytest.approx(shares[0].tolist())
    assert first["psi"] == pytest.approx(0) and first["js_divergence"] == pytest.approx(0)
    assert second["psi"] == pytest.approx(psi(shares[1], shares[0]))
    assert second["js_divergence"] == pytest.approx(
        jensenshannon(shares[1], shares[0], base=2) ** 2
    )
    assert r["reference"]["count"] == 300
    # By hand, not through psi(): sum (p - q) ln(p / q).
    p, q = shares[1], shares[0]
    assert second["psi"] == pytest.approx(float(((p - q) * np.log(p / q)).sum()))


def test_selective_prediction_and_its_target(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    probs, y = _labelled(_rows(c, ids, None))
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    target = 0.62
    r = c.get(
        f"{DASH}/selective",
        params={"thresholds": "0.5,0.55,0.6,0.7", "target_accuracy": target},
    ).json()
    for point in r["points"]:
        above = conf >= point["threshold"]
        assert point["count"] == above.sum()
        assert point["coverage"] == pytest.approx(above.mean())
        if above.any():
            assert point["accuracy"] == pytest.approx(correct[above].mean())
    t = r["target"]
    assert t is not None, r
    assert correct[conf >= t["threshold"]].mean() >= target
    # No lower threshold that keeps more items reaches the target: the coverage is the most.
    for lower in np.arange(0, round(t["threshold"] * 1000)) / 1000:
        above = conf >= lower
        assert above.sum() == t["count"] or correct[above].mean() < target


def test_confusion_and_histogram(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    rows = _rows(c, ids, None)
    probs, y = _labelled(rows)
    r = c.get(f"{DASH}/confusion").json()
    assert r["labels"] == LABELS
    assert r["matrix"] == confusion_matrix(y, probs.argmax(axis=1), labels=[0, 1]).tolist()
    h = c.get(f"{DASH}/confidence-histogram", params={"bins": 20}).json()["bins"]
    assert sum(b["correct"] + b["incorrect"] + b["unlabelled"] for b in h) == 500
    assert sum(b["unlabelled"] for b in h) == 100
    conf = probs.max(axis=1)
    ids_ = metrics.bin_ids(conf, 20)
    right = probs.argmax(axis=1) == y
    assert [b["correct"] for b in h] == np.bincount(ids_[right], minlength=20).tolist()
    assert [b["incorrect"] for b in h] == np.bincount(ids_[~right], minlength=20).tolist()


def test_compare_shows_calibrations_side_by_side(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    r = c.get(f"{DASH}/compare", params={"compare": "none,active", "job": ids["old"]}).json()
    none, active = r["calibrations"]
    assert (none["basis"]["calibration"], active["basis"]["calibration"]) == ("none", "active")
    for side, calibration in ((none, "none"), (active, "active")):
        probs, y = _labelled(_all(c, ids["old"], calibration=calibration))
        assert side["ece"] == pytest.approx(metrics.ece(probs, y), abs=1e-9)
    assert none["accuracy"] == pytest.approx(active["accuracy"])  # temperature keeps the argmax


def _classifier_series(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics' samples of the seeded classifier version, by name and their other labels."""
    from prometheus_client.parser import text_string_to_metric_families

    key = (("classifier", NAME), ("tenant", "default"), ("version", "1"))
    return {
        (s.name, tuple(sorted(set(s.labels.items()) - set(key)))): s.value
        for family in text_string_to_metric_families(c.get("/metrics").text)
        for s in family.samples
        if set(key) <= set(s.labels.items())
        and s.name.startswith(("labelq_confidence", "labelq_predictions"))
    }


def test_prometheus_series_per_classifier(seeded: tuple[TestClient, dict[str, Any]]) -> None:
    c, ids = seeded
    samples = _classifier_series(c)

    def value(name: str, **labels: str) -> float:
        return samples[name, tuple(sorted(labels.items()))]

    rows = _rows(c, ids, None)
    conf = np.array([row["confidence"] for row in rows])
    assert value("labelq_confidence_count") == 500
    assert value("labelq_confidence_sum") == pytest.approx(conf.sum())
    for le in ("0.5", "0.6", "0.7", "0.9", "1.0"):
        assert value("labelq_confidence_bucket", le=le) == (conf <= float(le)).sum()
    assert value("labelq_confidence_bucket", le="+Inf") == 500
    predicted = [row["label"] for row in rows]
    for label in LABELS:
        assert value("labelq_predictions_total", label=label) == predicted.count(label)


def test_migration_fills_the_columns_of_old_rows(
    factory: sessionmaker[Session], db_url: str, fake_scorer: Any
) -> None:
    """Down to 0004 (the columns and the counts are dropped) and up again: the schema steps
    add the columns, the backfill after them fills them from the JSON and counts what /metrics
    serves from them."""
    from alembic import command

    from db.migrate import alembic_config, upgrade

    columns = (JobItem.id, JobItem.predicted, JobItem.correct, JobItem.confidence, JobItem.brier)
    with _seed(factory, fake_scorer) as (c, ids):
        mine = select(*columns).where(JobItem.job_id == ids["new"]).order_by(JobItem.id)
        with factory() as s:
            before = s.execute(mine).all()
        counted = _classifier_series(c)
        assert counted[("labelq_confidence_count", ())] == 500
        assert all(row[1] is not None for row in before)
        factory.kw["bind"].dispose()
        command.downgrade(alembic_config(db_url), "0004")
        assert upgrade(db_url) == 500
        with factory() as s:
            after = s.execute(mine).all()
        assert len(after) == len(before) == 200
        assert sum(row[4] is not None for row in after) == 100  # the gold-labelled half
        for now, then in zip(after, before, strict=True):
            assert tuple(now[:3]) == tuple(then[:3])
            assert tuple(now[3:]) == pytest.approx(tuple(then[3:]))
        r = c.get(f"{DASH}/reliability", params={"job": ids["new"]}).json()
        assert r["n"] == 100
        recounted = _classifier_series(c)
        assert recounted.keys() == counted.keys()
        for key, value in counted.items():
            assert recounted[key] == pytest.approx(value), key


def test_the_grafana_dashboard_reads_series_that_metrics_serves(
    seeded: tuple[TestClient, dict[str, Any]],
) -> None:
    import re
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    c, _ = seeded
    families = list(text_string_to_metric_families(c.get("/metrics").text))
    served = {f.name for f in families} | {s.name for f in families for s in f.samples}
    board = json.loads(
        (Path(__file__).resolve().parents[1] / "deploy/grafana/labelq-calibration.json").read_text()
    )
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"labelq_[a-z_]+", e)}
    assert used and used <= served, used - served


@pytest.mark.slow
def test_postgres_estimates_the_dashboard_groups_from_their_statistics(pg_url: str) -> None:
    """Migration 0006's statistics are made on the very expressions `db.dashboard` groups by:
    after ANALYZE the planner's estimate of the number of groups is the true count, so it
    aggregates in each parallel worker. An expression with no statistic (7 bins) shows what
    the estimate is otherwise: one group per row."""
    from sqlalchemy import insert, text
    from sqlalchemy.dialects import postgresql

    from db.classifiers import store_version
    from db.migrate import upgrade
    from db.models import Job
    from labelq.spec import ClassifierSpec
    from tests.conftest import _empty_postgres, engine_at

    upgrade(pg_url)
    _empty_postgres(pg_url)
    engine = engine_at(pg_url)
    rng = np.random.default_rng(0)
    n = 3000
    start = datetime(2026, 11, 1, tzinfo=UTC)
    try:
        with sessionmaker(engine, expire_on_commit=False)() as s:
            classifier, _ = store_version(s, ClassifierSpec.model_validate(SPEC), tenant="default")
            s.add(Job(id="j", classifier_id=classifier.id, model="m", queue="q", chunk_size=64))
            s.flush()
            seconds = rng.uniform(0, 100 * 3600, n)
            confidence = rng.uniform(0.5, 1.0, n)
            s.execute(
                insert(JobItem),
                [
                    {
                        "job_id": "j",
                        "idx": i,
                        "status": "succeeded",
                        "classifier_id": classifier.id,
                        "confidence": float(confidence[i]),
                        "scored_at": start + timedelta(seconds=float(seconds[i])),
                    }
                    for i in range(n)
                ],
            )
            s.commit()
            s.execute(text("ANALYZE items"))
            keys = {
                "hour": sums.bucket_of(s, "hour"),
                "day": sums.bucket_of(s, "day"),
                "15 bins": sums.width_bin(s, 15),
                "20 bins": sums.width_bin(s, 20),
                "7 bins": sums.width_bin(s, 7),
            }
            for label, key in keys.items():
                query = select(key).group_by(key)
                true_groups = len(s.execute(query).all())
                sql = query.compile(dialect=postgresql.dialect())
                plan = s.execute(text(f"EXPLAIN (FORMAT JSON) {sql}")).scalar_one()
                estimate = plan[0]["Plan"]["Plan Rows"]
                if label == "7 bins":
                    assert true_groups == 4 and estimate > n / 2, (label, estimate)
                else:
                    assert estimate == true_groups, (label, estimate, true_groups)
    finally:
        engine.dispose()
        _empty_postgres(pg_url)
