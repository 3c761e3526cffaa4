"""A worker that cannot load its model takes no tasks: it says why (its readiness file, its log,
the job's warnings, its metrics) and tries again until it can, on the fake backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import generate_latest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import WorkerLoad
from labelq.scoring import Scorer
from labelq.settings import Settings
from service import workers
from tests.conftest import make_client, services_of
from worker.runtime import WorkerRuntime

SPEC = {"name": "c", "template": "{{ text }}", "labels": {"a": " a", "b": " b"}}


def test_a_worker_that_cannot_load_its_model_says_why_and_tries_again(
    factory: sessionmaker[Session], fake_scorer: Scorer, tmp_path: Path
) -> None:
    runtime = WorkerRuntime(services_of(factory, Settings(model="tiny-model")), "tiny-model")
    client, _ = make_client(factory, None)  # the API; its chunks stay queued
    tries: list[str] = []

    def scorer_for(model: str) -> Scorer:
        tries.append(model)
        if len(tries) < 3:
            raise OSError("Error starting the engine:\nno config.json in /models/tiny-model")
        return fake_scorer

    runtime.engines.scorer_for = scorer_for  # type: ignore[method-assign]
    why = tmp_path / "labelq-ready.why"
    seen: list[dict[str, Any]] = []

    def sleep(seconds: float) -> None:  # between attempts: what everyone sees meanwhile
        with client:
            job = client.post("/v1/jobs", json={"classifier": "c", "items": [{"text": "x"}]})
            status = client.get(f"/v1/jobs/{job.json()['id']}").json()
            metrics = client.get("/metrics").text
        seen.append({"delay": seconds, "why": why.read_text(), "metrics": metrics, **status})

    with client:
        assert client.post("/v1/classifiers", json=SPEC).status_code == 201
    took = runtime.load_model(why, sleep=sleep)

    assert len(tries) == 3 and took >= 0
    assert [s["delay"] for s in seen] == [5.0, 10.0]
    first = seen[0]
    assert first["why"] == (
        "not ready: could not load tiny-model (attempt 1): OSError: no config.json in "
        "/models/tiny-model\n"
    )
    cannot = [w for w in first["warnings"] if "cannot load" in w]
    assert cannot == [
        f"worker {runtime.name} cannot load model tiny-model (1 attempt(s), still trying): "
        "OSError: no config.json in /models/tiny-model"
    ]
    assert any("2 attempt(s)" in w for w in seen[1]["warnings"])
    failing = f'labelq_queue_workers_failing_to_load{{queue="{runtime.queue}"}} 1.0'
    assert all(failing in s["metrics"] for s in seen)
    assert [(s["state"], s["succeeded"], s["failed"]) for s in seen] == [("queued", 0, 0)] * 2
    assert why.read_text().startswith("loaded tiny-model in ")
    # Loaded: no job warns of it any more; the worker's metrics say what happened.
    assert workers.failed_loads(runtime.ctx) == {}
    with client:
        served = client.get("/metrics").text
    assert f'labelq_queue_workers_failing_to_load{{queue="{runtime.queue}"}} 0.0' in served
    metrics = generate_latest(runtime.metrics.registry).decode()
    assert f'labelq_worker_model_load_failures_total{{queue="{runtime.queue}"}} 2.0' in metrics
    assert f'labelq_worker_model_load_seconds{{queue="{runtime.queue}"}}' in metrics
    assert f'labelq_worker_ready{{queue="{runtime.queue}"}} 0.0' in metrics  # not consuming yet
    # Leaving removes its record.
    workers.leave(runtime.ctx, runtime.name)
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(WorkerLoad)) == 0


def test_a_workers_metrics_time_its_chunks_and_its_engine(
    factory: sessionmaker[Session], fake_scorer: Scorer
) -> None:
    runtime = WorkerRuntime(services_of(factory, Settings(model="tiny-model")), "tiny-model")
    runtime.runner.scorer_for = lambda _model: fake_scorer
    client, _ = make_client(factory, None)  # chunks of 4
    with client:
        assert (
            client.post("/v1/classifiers", json={**SPEC, "model": "tiny-model"}).status_code == 201
        )
        job = client.post("/v1/jobs", json={"classifier": "c", "items": [{"text": "x"}] * 8})
    job_id = job.json()["id"]
    assert runtime.score_chunk(job_id, 0) and runtime.score_chunk(job_id, 1)
    assert not runtime.score_chunk(job_id, 1)  # done already: nothing to write
    metrics = generate_latest(runtime.metrics.registry).decode()
    queue = runtime.queue
    assert f'labelq_worker_chunk_seconds_count{{outcome="scored",queue="{queue}"}} 2.0' in metrics
    assert f'labelq_worker_chunk_seconds_count{{outcome="skipped",queue="{queue}"}} 1.0' in metrics
    busy = [line for line in metrics.splitlines() if line.startswith("labelq_worker_engine_sec")]
    assert busy and float(busy[0].split()[-1]) > 0, busy
