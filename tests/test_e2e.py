"""End to end: HTTP API -> Redis -> a real Celery worker process holding the tiny vLLM model ->
PostgreSQL, checked item by item against the scorer run directly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.scoring import Item as ScoreItem
from labelq.scoring import ItemResult, Scorer
from labelq.spec import parse_spec
from tests.conftest import SHARED_DATA, TEST_MAX_MODEL_LEN

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("LABELQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
SPEC = {
    "name": "e2e",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good film"], "negative": " negative"},
}


def _worker_env(db: str, model: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LABELQ_DATABASE_URL": db,
        "LABELQ_BROKER_URL": REDIS_URL,
        "LABELQ_MODEL": str(model),
        "LABELQ_DTYPE": "float32",
        "LABELQ_MAX_MODEL_LEN": str(TEST_MAX_MODEL_LEN),
        "LABELQ_KV_CACHE_GIB": "1",
        "LABELQ_VISIBILITY_TIMEOUT": "20",
    }


class WorkerProcess:
    """`labelq worker` in its own process group, so stopping it stops its engine too."""

    def __init__(self, db: str, model: Path, log: Path):
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labelq.cli", "worker", "--loglevel", "WARNING"],
            env=_worker_env(db, model),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="module")
def service(
    pg_url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    import redis

    from api.app import create_app
    from api.cli import BackgroundServer
    from db.migrate import upgrade
    from labelq.client import LabelqClient
    from labelq.settings import Settings

    redis.Redis.from_url(REDIS_URL).flushdb()
    upgrade(pg_url)
    logs = tmp_path_factory.mktemp("worker")
    state: dict[str, Any] = {"worker": WorkerProcess(pg_url, tiny_model, logs / "worker.log")}
    settings = Settings(
        database_url=pg_url, broker_url=REDIS_URL, model=str(tiny_model), chunk_size=64
    )
    try:
        with BackgroundServer(create_app(settings)) as server, LabelqClient(server.url) as client:
            client.create_classifier(json.dumps(SPEC), yaml=False)
            state.update(client=client, db=pg_url, model=tiny_model, logs=logs)
            yield state
    finally:
        state["worker"].stop()


def test_items_match_the_scorer_run_directly(service: dict[str, Any], vllm_backend: Any) -> None:
    client = service["client"]
    texts = [f"review {i}: " + "warm and funny " * (i % 5) for i in range(150)] + ["naïve café 😀"]
    items: list[Any] = [{"custom_id": f"r{i}", "text": t} for i, t in enumerate(texts)]
    items.insert(10, {"custom_id": "bad", "body": "no text field"})
    job = client.submit("e2e", items)
    job = client.wait(job["id"], timeout=600)
    assert (job["state"], job["total"], job["succeeded"], job["failed"]) == (
        "succeeded",
        152,
        151,
        1,
    )
    rows = list(client.results(job["id"], limit=50))
    assert [r["custom_id"] for r in rows] == [it["custom_id"] for it in items]
    assert rows[10]["status"] == "failed" and rows[10]["field"] == "text"
    direct = Scorer(vllm_backend).score(
        parse_spec(SPEC), [ScoreItem(fields={"text": t}) for t in texts]
    )
    scored = [r for r in rows if r["status"] == "succeeded"]
    for row, want in zip(scored, direct, strict=True):
        assert isinstance(want, ItemResult)
        assert row["label"] == want.label
        for label, comps in want.completion_logprobs.items():
            for completion, value in comps.items():
                assert abs(row["completion_logprobs"][label][completion] - value) < 1e-4


def _sst2_jsonl(path: Path, n: int) -> int:
    lines = (
        (SHARED_DATA / "sst2" / "stsa.binary.train").read_text(encoding="utf-8").splitlines()[:n]
    )
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            label, text = line.split(" ", 1)
            f.write(json.dumps({"custom_id": f"sst2-{i}", "text": text, "gold": int(label)}) + "\n")
    return len(lines)


def test_sst2_jsonl_job_of_thousands_completes(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    n = _sst2_jsonl(tmp_path / "sst2.jsonl", 3000)
    job = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e", idempotency_key="sst2-3000")
    again = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e", idempotency_key="sst2-3000")
    assert again["id"] == job["id"]
    seen_progress = set()
    deadline = time.monotonic() + 900
    while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        seen_progress.add(job["succeeded"] + job["failed"])
        time.sleep(1)
        job = client.job(job["id"])
    assert (job["state"], job["total"], job["succeeded"]) == ("succeeded", n, n)
    assert len(seen_progress) > 2, "counts must update as chunks finish, not only at the end"
    lines = client.results_jsonl(job["id"], tmp_path / "out.jsonl")
    rows = [
        json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert lines == n and [r["custom_id"] for r in rows] == [f"sst2-{i}" for i in range(n)]
    assert all(r["extra"] == {"gold": r["extra"]["gold"]} for r in rows)


def test_cancel_and_worker_crash_recovery(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    # Cancel: pending chunks stop; the running one finishes and keeps its results.
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    while client.job(job["id"])["succeeded"] == 0:
        time.sleep(0.2)
    cancelled = client.cancel(job["id"])
    assert cancelled["state"] in ("cancelling", "cancelled")
    final = client.wait(job["id"], timeout=300)
    assert final["state"] == "cancelled" and 0 < final["succeeded"] < 1500
    assert final["succeeded"] + final["cancelled"] == 1500

    # kill -9 the worker mid-job; a new worker picks up the unacked chunk; nothing is lost.
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    while client.job(job["id"])["succeeded"] == 0:
        time.sleep(0.2)
    service["worker"].kill()
    service["worker"] = WorkerProcess(
        service["db"], service["model"], service["logs"] / "worker2.log"
    )
    final = client.wait(job["id"], timeout=600)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    ids = [r["custom_id"] for r in client.results(job["id"], limit=1000)]
    assert ids == [f"sst2-{i}" for i in range(1500)]
