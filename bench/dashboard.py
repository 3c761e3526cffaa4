"""The dashboard's queries on 1,000,000 stored results on PostgreSQL (target: each under 0.5 s).

Seeds a scratch database through the real tables (a classifier version, 100 jobs of 10,000
scored items with result JSON and the dashboard's columns, 30% gold-labelled, scored over 30
days; COPY, then VACUUM ANALYZE as autovacuum would), then times every query through the API
in-process: the median of 5 runs each. The baseline, in the same run: the per-job metrics
endpoint that reads every item's JSON in Python, against the reliability query on that job.

    .venv/bin/python bench/dashboard.py [--jobs 100] [--items-per-job 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import sessionmaker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import scratch_database  # noqa: E402

LABELS = ["positive", "negative", "neutral"]
SPEC = {
    "name": "bench",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {label: f" {label}" for label in LABELS},
}
COLUMNS = (
    "job_id, idx, custom_id, input, status, result, gold_label, calibration_id, classifier_id, "
    "predicted, confidence, correct, brier, scored_at"
)


def seed(url: str, jobs: int, per_job: int) -> tuple[int, list[str]]:
    """Rows through the real tables; returns the classifier row id and the job ids."""
    from sqlalchemy import text

    from db.classifiers import store_version
    from db.counts import count_scored
    from db.models import Job, JobState
    from labelq.settings import Settings
    from labelq.spec import ClassifierSpec
    from service import wiring

    engine = wiring.database_engine(Settings(database_url=url))
    factory = sessionmaker(engine, expire_on_commit=False)
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    with factory() as s:
        classifier, _ = store_version(s, ClassifierSpec.model_validate(SPEC), tenant="default")
        job_ids = [str(uuid.uuid4()) for _ in range(jobs)]
        for k, job_id in enumerate(job_ids):
            s.add(
                Job(
                    id=job_id,
                    classifier_id=classifier.id,
                    model="bench",
                    queue="labelq.bench",
                    state=JobState.succeeded,
                    total=per_job,
                    succeeded=per_job,
                    chunk_size=64,
                    created_at=now - timedelta(days=30) + timedelta(days=30 * k / jobs),
                )
            )
        s.commit()
        cid = classifier.id
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        with cur.copy(f"COPY items ({COLUMNS}) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for k, job_id in enumerate(job_ids):
                results = []
                gold = rng.integers(0, len(LABELS), per_job)
                logits = rng.normal(0, 1.5, (per_job, len(LABELS)))
                logits[np.arange(per_job), gold] += rng.normal(1.5, 1.0, per_job)
                probs = np.exp(logits - logits.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
                labelled = rng.random(per_job) < 0.3
                start = now - timedelta(days=30) + timedelta(days=30 * k / jobs)
                seconds = rng.uniform(0, 30 * 86400 / jobs, per_job)
                for i in range(per_job):
                    p = probs[i]
                    top = int(p.argmax())
                    result = {
                        "label": LABELS[top],
                        "confidence": float(p[top]),
                        "probs": dict(zip(LABELS, p.tolist(), strict=True)),
                        "logprobs": dict(zip(LABELS, np.log(p).tolist(), strict=True)),
                    }
                    results.append(result)
                    g = LABELS[int(gold[i])] if labelled[i] else None
                    copy.write_row(
                        (
                            job_id,
                            i,
                            f"c{i}",
                            json.dumps({"text": f"review {i}"}),
                            "succeeded",
                            json.dumps(result),
                            g,
                            None,
                            cid,
                            LABELS[top],
                            float(p[top]),
                            (top == int(gold[i])) if g else None,
                            float(((p - np.eye(len(LABELS))[int(gold[i])]) ** 2).sum())
                            if g
                            else None,
                            start + timedelta(seconds=float(seconds[i])),
                        )
                    )
                with factory.begin() as s:  # what completing the job's chunks adds to
                    count_scored(s, cid, results)
        raw.commit()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE items"))
    engine.dispose()
    return cid, job_ids


def timed(call: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--items-per-job", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from api.app import create_app
    from labelq.settings import Settings
    from service import wiring

    total = args.jobs * args.items_per_job
    with scratch_database() as url:
        start = time.perf_counter()
        _, job_ids = seed(url, args.jobs, args.items_per_job)
        print(f"seeded {total:,} scored items in {time.perf_counter() - start:.0f} s")
        services = wiring.build_api(Settings(database_url=url))
        app = create_app(services)
        base = "/v1/classifiers/bench"
        queries = {
            "reliability (15 bins)": f"{base}/reliability",
            "reliability (equal mass)": f"{base}/reliability?binning=mass",
            "timeseries (day)": f"{base}/timeseries?bucket=day",
            "timeseries (hour)": f"{base}/timeseries?bucket=hour",
            "confidence histogram": f"{base}/confidence-histogram",
            "confusion": f"{base}/confusion",
            "label distribution": f"{base}/label-distribution?bucket=day",
            "selective": f"{base}/selective?target_accuracy=0.9",
            "compare stored,none": f"{base}/compare?compare=stored,none&job={job_ids[0]}",
            "/metrics (Prometheus)": "/metrics",
        }
        with TestClient(app, client=("127.0.0.1", 1)) as c:

            def get(path: str) -> None:
                r = c.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])

            print(f"\nmedian of {args.runs} runs, all {total:,} results (target: under 0.5 s):")
            for label, path in queries.items():
                seconds = timed(lambda p=path: get(p), args.runs)  # type: ignore[misc]
                flag = "" if seconds < 0.5 else "   over target"
                print(f"  {label:26s} {seconds * 1000:8.1f} ms{flag}")

            job = job_ids[0]
            per_job = timed(lambda: get(f"/v1/jobs/{job}/metrics"), args.runs)
            in_sql = timed(lambda: get(f"{base}/reliability?job={job}"), args.runs)
            print(
                f"\none job ({args.items_per_job:,} items): per-job metrics endpoint (JSON in "
                f"Python) {per_job * 1000:.0f} ms, reliability in SQL {in_sql * 1000:.1f} ms: "
                f"ratio {per_job / in_sql:.1f}x"
            )
        wiring.close(services)


if __name__ == "__main__":
    main()
