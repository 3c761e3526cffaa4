"""End to end, with real processes: HTTP API -> Redis -> `labelq worker` holding the tiny vLLM
model -> PostgreSQL, and `labelq beat` running the reconciler.

Faults are injected as users meet them, with production defaults: the broker's visibility
timeout stays at its 4 hours. Only labelq's own timers are shortened (lease, reconciler period,
stall detection, heartbeats), which is what makes recovery fast or slow.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.client import ENDED
from labelq.scoring import Item as ScoreItem
from labelq.scoring import ItemResult, Scorer
from labelq.spec import parse_spec
from tests.conftest import SHARED_DATA, TEST_MAX_MODEL_LEN
from tests.test_pipelines import scratch_postgres

pytestmark = pytest.mark.slow

SPEC = {
    "name": "e2e",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good film"], "negative": " negative"},
}
# labelq's own timers, shortened; nothing of the broker's.
TIMERS = {
    "LABELQ_LEASE_SECONDS": "6",
    "LABELQ_RECONCILE_INTERVAL": "2",
    "LABELQ_STALL_AFTER": "8",
    "LABELQ_WORKER_HEARTBEAT": "2",
    "LABELQ_WORKER_STALE_AFTER": "10",
    "LABELQ_ENGINE_RETRY_BACKOFF": "1",
    "LABELQ_BEAT_LOCK_SECONDS": "6",
    # An engine call's deadline: a quarter second an item, at least 20 s (a call of 64 items
    # here takes under a second).
    "LABELQ_SCORE_TIMEOUT": "0.25",
    "LABELQ_SCORE_TIMEOUT_FLOOR": "20",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A Redis of the test's own, as the machine's is started: no persistence. Restarting it
    loses every queued task, as a real restart does."""

    def __init__(self, folder: Path):
        self.port = _free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


def _engine_processes(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids: list[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def _wait_gone(pids: list[int], timeout: float = 20) -> float:
    """Seconds until none of `pids` runs; fails past `timeout`."""
    start = time.monotonic()
    while _alive(pids):
        assert time.monotonic() - start < timeout, f"still running: {_alive(pids)}"
        time.sleep(0.2)
    return time.monotonic() - start


class Proc:
    """A `labelq` command in a process of its own."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path):
        self.ready: Path | None = None
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labelq.cli", *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="module")
def service(
    pg_url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    from api.app import create_app
    from api.server import BackgroundServer
    from db.migrate import upgrade
    from labelq.client import LabelqClient
    from labelq.settings import Settings
    from service import wiring

    logs = tmp_path_factory.mktemp("e2e")
    redis = RedisServer(logs)
    redis.start()
    upgrade(pg_url)
    broken = logs / "not-a-model"
    broken.mkdir()
    (broken / "README").write_text("no weights here")
    # The models this service serves, API and workers alike: the tiny one, one no worker
    # serves, one that cannot load.
    # A second model for the scale-out test: the same weights under another path are another
    # model to labelq, with a queue and workers of its own.
    other = logs / "other-model"
    shutil.copytree(tiny_model, other)
    served = ["/models/none", str(broken), str(other)]
    # The pipelines' database: the operator's, never labelq's own.
    news = contextlib.ExitStack()
    news_db = news.enter_context(scratch_postgres())
    connections = {"news": {"url": news_db, "write": True}}
    env = {
        **os.environ,
        **TIMERS,
        "LABELQ_DATABASE_URL": pg_url,
        "LABELQ_BROKER_URL": redis.url,
        "LABELQ_MODEL": str(tiny_model),
        "LABELQ_DTYPE": "float32",
        "LABELQ_MAX_MODEL_LEN": str(TEST_MAX_MODEL_LEN),
        "LABELQ_KV_CACHE_GIB": "1",
        "LABELQ_HOME": str(logs / "home"),
        "LABELQ_MODELS": json.dumps(served),
        "LABELQ_PIPELINE_CONNECTIONS": json.dumps(connections),
    }
    state: dict[str, Any] = {"env": env, "logs": logs, "redis": redis, "procs": []}

    def start(name: str, *args: str, **extra_env: str) -> Proc:
        if args[0] == "worker":  # a worker says when it has its model and takes tasks
            extra_env.setdefault("LABELQ_READY_FILE", str(logs / f"{name}.ready"))
        proc = Proc(list(args), {**env, **extra_env}, logs / f"{name}.log")
        proc.ready = Path(extra_env["LABELQ_READY_FILE"]) if args[0] == "worker" else None
        state["procs"].append(proc)
        return proc

    state["start"] = start
    state["worker"] = start("worker", "worker", "--loglevel", "WARNING")
    state["beat"] = start("beat", "beat", "--loglevel", "WARNING")
    state["broken"] = broken
    state["other"] = other
    settings = Settings(
        database_url=pg_url,
        broker_url=redis.url,
        model=str(tiny_model),
        models=served,
        chunk_size=64,
        worker_stale_after=10,
        no_auth=True,  # the test's own server, on loopback
        pipeline_connections=connections,
    )
    try:
        app = create_app(wiring.build_api(settings))
        with BackgroundServer(app) as server, LabelqClient(server.url) as client:
            client.create_classifier(json.dumps(SPEC), yaml=False)
            state.update(
                client=client, db=pg_url, news_db=news_db, model=tiny_model, url=server.url
            )
            yield state
    finally:
        for proc in state["procs"]:
            proc.stop()
        redis.stop()
        news.close()


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _sst2_jsonl(path: Path, n: int) -> int:
    lines = (
        (SHARED_DATA / "sst2" / "stsa.binary.train").read_text(encoding="utf-8").splitlines()[:n]
    )
    with open(path, "w", encoding="utf-8") as f:
        for i, line in enumerate(lines):
            label, text = line.split(" ", 1)
            f.write(json.dumps({"custom_id": f"sst2-{i}", "text": text, "gold": int(label)}) + "\n")
    return len(lines)


def _exactly_once(client: Any, job_id: str, n: int) -> None:
    """Every item exactly once, in input order, each with a result."""
    rows = list(client.results(job_id, limit=1000))
    assert [r["custom_id"] for r in rows] == [f"sst2-{i}" for i in range(n)]
    assert all(r["status"] == "succeeded" for r in rows)


def _started(client: Any, job_id: str) -> Callable[[], bool]:
    return lambda: client.job(job_id)["succeeded"] > 0


def test_items_match_the_scorer_run_directly(service: dict[str, Any], vllm_backend: Any) -> None:
    client = service["client"]
    texts = [f"review {i}: " + "warm and funny " * (i % 5) for i in range(150)] + ["naïve café 😀"]
    items: list[Any] = [{"custom_id": f"r{i}", "text": t} for i, t in enumerate(texts)]
    items.insert(10, {"custom_id": "bad", "body": "no text field"})
    job = client.submit("e2e", items)
    job = client.wait(job["id"], timeout=600)
    assert (job["state"], job["total"], job["succeeded"], job["failed"]) == (
        "partial",  # the bad line has no result: the state says so
        152,
        151,
        1,
    )
    assert job["failures"] == {"input": 1}
    assert job["warnings"] == []
    rows = list(client.results(job["id"], limit=50))
    # what it cost: the worker's engine time and the prompts' tokens
    assert job["cost"]["engine_seconds"] > 0
    assert job["cost"]["prompt_tokens"] == sum(r.get("prompt_tokens", 0) for r in rows)
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


def test_sst2_jsonl_job_of_thousands_completes(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    n = _sst2_jsonl(tmp_path / "sst2.jsonl", 3000)
    job = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e", idempotency_key="sst2-3000")
    again = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e", idempotency_key="sst2-3000")
    assert again["id"] == job["id"]
    seen_progress = set()
    deadline = time.monotonic() + 900
    while job["state"] not in ENDED and time.monotonic() < deadline:
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


def test_cancel_stops_pending_chunks(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    cancelled = client.cancel(job["id"])
    assert cancelled["state"] in ("cancelling", "cancelled")
    final = client.wait(job["id"], timeout=300)
    assert final["state"] == "cancelled" and 0 < final["succeeded"] < 1500
    assert final["succeeded"] + final["cancelled"] == 1500


def test_worker_killed_mid_chunk_recovers_in_a_lease(
    service: dict[str, Any], tmp_path: Path
) -> None:
    """kill -9 of the worker process alone (as the OOM killer does): its engine processes
    exit within seconds, and a new worker finishes the job with every item exactly once,
    long before the broker's 4-hour visibility timeout."""
    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    old = service["worker"]
    engine = _engine_processes(old.pid)
    assert engine, "the worker holds its engine in child processes"
    old.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    gone_after = _wait_gone(engine)
    service["worker"] = service["start"]("worker-2", "worker", "--loglevel", "WARNING")
    final = client.wait(job["id"], timeout=600)
    recovered_after = time.monotonic() - killed_at
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    _exactly_once(client, job["id"], 1500)
    print(
        f"\nkill -9: engine gone after {gone_after:.1f} s; job done {recovered_after:.1f} s later"
    )


def test_redis_restart_without_persistence(service: dict[str, Any], tmp_path: Path) -> None:
    client, redis = service["client"], service["redis"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    redis.stop()  # every queued task is lost with it
    restarted_at = time.monotonic()
    time.sleep(1)
    redis.start()
    final = client.wait(job["id"], timeout=600)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    _exactly_once(client, job["id"], 1500)
    print(f"\nredis restart: job done {time.monotonic() - restarted_at:.1f} s after it")


def test_postgres_restart(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "-m", "fast"],
        check=True,
        timeout=120,
    )
    restarted_at = time.monotonic()
    final = client.wait(job["id"], timeout=600)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    _exactly_once(client, job["id"], 1500)
    print(f"\npostgres restart: job done {time.monotonic() - restarted_at:.1f} s after it")


def test_a_worker_that_cannot_load_its_model_takes_no_tasks_says_why_and_recovers(
    service: dict[str, Any],
) -> None:
    """A worker whose model folder holds no model: it consumes nothing (the job waits, none of
    its items failed), its readiness file and the job's warnings say why, and it tries again:
    once the folder is filled (a loader finishing late), it loads the model and scores the job.
    A second such worker stopped while it waits leaves at once, and its record with it."""
    client, broken = service["client"], service["broken"]
    worker = service["start"](
        "broken-worker", "worker", "--model", str(broken), "--loglevel", "WARNING"
    )
    assert worker.ready is not None
    why = worker.ready.with_name(worker.ready.name + ".why")
    client.create_classifier(json.dumps({**SPEC, "name": "broken", "model": str(broken)}), False)
    items = [{"custom_id": f"b{i}", "text": f"t{i}"} for i in range(20)]
    job = client.submit("broken", items)
    deadline = time.monotonic() + 120
    seen = client.job(job["id"])
    while not any("cannot load" in w for w in seen["warnings"]):
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
        seen = client.job(job["id"])
    (warning,) = [w for w in seen["warnings"] if "cannot load" in w]
    assert f"cannot load model {broken}" in warning and "still trying" in warning, warning
    assert (seen["state"], seen["succeeded"], seen["failed"]) == ("queued", 0, 0)
    assert why.read_text().startswith(f"not ready: could not load {broken} (attempt ")
    assert not worker.ready.exists() and worker.proc.poll() is None
    # A second worker of the same model, stopped while it waits: gone at once, said so.
    second = service["start"](
        "broken-worker-2", "worker", "--model", str(broken), "--loglevel", "WARNING"
    )
    assert second.ready is not None
    second_why = second.ready.with_name(second.ready.name + ".why")
    while "could not load" not in (second_why.read_text() if second_why.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 128 + signal.SIGTERM
    # The loader finishes: the folder now holds the model. The first worker's next try loads
    # it, and the job is scored.
    shutil.copytree(service["other"], broken, dirs_exist_ok=True)
    start = time.monotonic()
    final = client.wait(job["id"], timeout=300)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 20, 0)
    assert worker.ready.exists() and not why.exists()
    assert not any("cannot load" in w for w in client.job(job["id"])["warnings"])
    print(f"\nmodel filled late: job scored {time.monotonic() - start:.1f} s after")


def test_a_job_with_no_worker_says_so(service: dict[str, Any]) -> None:
    import httpx

    client = service["client"]
    client.create_classifier(json.dumps({**SPEC, "name": "orphan", "model": "/models/none"}), False)
    job = client.submit("orphan", [{"text": "x"}])
    assert job["state"] == "queued"
    assert any("no worker has been seen" in w for w in job["warnings"])
    ready = httpx.get(f"{service['url']}/readyz").json()
    assert any("none" in q for q in ready["unserved_queues"])
    metrics = httpx.get(f"{service['url']}/metrics").text
    assert 'labelq_queue_unfinished_jobs{queue="labelq.none.' in metrics
    assert 'served="no"} 1.0' in metrics
    client.cancel(job["id"])


def test_a_wedged_engine_is_killed_and_the_job_still_ends(
    service: dict[str, Any], tmp_path: Path
) -> None:
    """SIGSTOP to the worker's `VLLM::EngineCore` mid-job: its engine call never returns (a
    wedged GPU or engine core). Past the call's deadline the worker kills that engine, hands
    the chunk back and loads a new one; the job ends `succeeded`, every item exactly once,
    and no stopped process is left."""
    import psutil

    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    engine = _engine_processes(service["worker"].pid)
    cores = [p for p in engine if "EngineCore" in " ".join(psutil.Process(p).cmdline())]
    assert cores, "the worker's engine core runs in a process of its own"
    for pid in cores:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    final = client.wait(job["id"], timeout=900)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    _exactly_once(client, job["id"], 1500)
    assert not _alive(engine), f"left behind: {_alive(engine)}"
    print(f"\nSIGSTOP of the engine core: job done {time.monotonic() - stopped_at:.1f} s after it")


def test_sigterm_to_the_worker_stops_its_engine(service: dict[str, Any], tmp_path: Path) -> None:
    client = service["client"]
    _sst2_jsonl(tmp_path / "a.jsonl", 1500)
    job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
    _wait_for(_started(client, job["id"]), 300, "the first chunk")
    old = service["worker"]
    engine = _engine_processes(old.pid)
    old.signal(signal.SIGTERM)
    old.wait(timeout=120)
    _wait_gone(engine, timeout=10)
    service["worker"] = service["start"]("worker-3", "worker", "--loglevel", "WARNING")
    final = client.wait(job["id"], timeout=600)
    assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
    _exactly_once(client, job["id"], 1500)


def test_sigterm_to_serve_embedded_stops_its_engine(
    service: dict[str, Any], tmp_path: Path, tiny_model: Path
) -> None:
    from labelq.client import LabelqClient

    port = _free_port()
    home = tmp_path / "home"
    env = {
        k: v
        for k, v in service["env"].items()
        if k not in ("LABELQ_DATABASE_URL", "LABELQ_BROKER_URL")
    }
    env.update(LABELQ_HOME=str(home), LABELQ_API_PORT=str(port))

    def serve(name: str) -> Proc:
        return Proc(["serve", "--embedded", "--no-auth"], env, tmp_path / f"{name}.log")

    server = serve("embedded")
    try:
        url = f"http://127.0.0.1:{port}"
        with LabelqClient(url) as client:
            _wait_for(lambda: _answers(url), 300, "the embedded server")
            client.create_classifier(json.dumps(SPEC), yaml=False)
            _sst2_jsonl(tmp_path / "a.jsonl", 1500)
            job = client.submit_jsonl(tmp_path / "a.jsonl", "e2e")
            _wait_for(_started(client, job["id"]), 300, "the first chunk")
            engine = _engine_processes(server.pid)
            assert engine
            server.signal(signal.SIGTERM)
            server.wait(timeout=120)
            _wait_gone(engine, timeout=10)
            server.stop()
            server = serve("embedded-2")
            _wait_for(lambda: _answers(url), 300, "the embedded server again")
            final = client.wait(job["id"], timeout=600)
            assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", 1500, 0)
            _exactly_once(client, job["id"], 1500)
    finally:
        server.stop()


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _beat_lock_owner(db: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    with engine.connect() as c:
        owner = c.execute(text("SELECT owner FROM locks WHERE name = 'beat'")).scalar()
    engine.dispose()
    return owner


def test_beat_runs_pipelines_and_only_one_beat_sends(service: dict[str, Any]) -> None:
    from sqlalchemy import create_engine, text

    client, db = service["client"], service["db"]
    engine = create_engine(service["news_db"])
    with engine.begin() as c:
        c.execute(text("CREATE TABLE e2e_articles (id SERIAL PRIMARY KEY, body TEXT)"))
        c.execute(
            text("INSERT INTO e2e_articles (body) VALUES (:b)"),
            [{"b": f"review {i}: warm and funny"} for i in range(50)],
        )
    try:
        pipeline = {
            "name": "every-two-seconds",
            "classifier": "e2e",
            "schedule": {"every": 2},
            "source": {
                "kind": "sql",
                "connection": "news",
                "table": "e2e_articles",
                "key": "id",
                "watermark": "id",
                "fields": {"text": "body"},
            },
            "sink": {"kind": "sql", "connection": "news", "table": "e2e_labels"},
        }
        client.create_pipeline(pipeline)
        # A run whose job cannot progress (no worker serves its model) blocks later ticks.
        client.create_classifier(
            json.dumps({**SPEC, "name": "stuck", "model": "/models/none"}), False
        )
        client.create_pipeline({**pipeline, "name": "stuck", "classifier": "stuck", "sink": None})

        def states(name: str) -> list[str]:
            return [r["state"] for r in client.pipeline_runs(name, 50)]

        _wait_for(lambda: "succeeded" in states("every-two-seconds"), 120, "a scheduled run")
        _wait_for(lambda: "skipped" in states("stuck"), 120, "a skipped tick")
        skipped = next(r for r in client.pipeline_runs("stuck", 50) if r["state"] == "skipped")
        assert "is still going" in skipped["error"]
        assert states("stuck").count("running") == 1, "never two runs at once"
        with engine.connect() as c:
            keys = c.execute(text("SELECT key FROM e2e_labels ORDER BY key")).scalars().all()
        assert [int(k) for k in keys] == list(range(1, 51))
        first = client.pipeline_runs("every-two-seconds", 50)[-1]
        assert first["rows_read"] == 50 and first["trigger"] == "schedule"

        # A second beat waits while the first holds the lock, and takes over when it dies.
        owner = _beat_lock_owner(db)
        assert owner is not None and owner.endswith(f":{service['beat'].pid}")
        second = service["start"]("beat-2", "beat", "--loglevel", "WARNING")
        time.sleep(8)
        assert second.proc.poll() is None and _beat_lock_owner(db) == owner
        service["beat"].signal(signal.SIGKILL)
        _wait_for(
            lambda: (_beat_lock_owner(db) or "").endswith(f":{second.pid}"),
            30,
            "the second beat to take the lock",
        )
        service["beat"] = second
    finally:
        for name in ("every-two-seconds", "stuck"):
            with contextlib.suppress(Exception):
                client.update_pipeline(name, {"enabled": False})
        with engine.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS e2e_articles"))
            c.execute(text("DROP TABLE IF EXISTS e2e_labels"))
        engine.dispose()


def _chunk_owners(db: str, job_id: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT owner, count(*) FROM chunks WHERE job_id = :j GROUP BY owner"),
            {"j": job_id},
        ).all()
    engine.dispose()
    per_worker: dict[str, int] = {}
    for owner, n in rows:  # an owner is `worker name/claim token`
        name = str(owner).split("/")[0]
        per_worker[name] = per_worker.get(name, 0) + int(n)
    return per_worker


def _queue_workers(db: str, queue: str) -> set[str]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db)
    with engine.connect() as c:
        rows = c.execute(text("SELECT name FROM workers WHERE queue = :q"), {"q": queue}).all()
    engine.dispose()
    return {str(r[0]) for r in rows}


def test_two_workers_share_a_queue_and_another_model_keeps_its_own(
    service: dict[str, Any], tmp_path: Path
) -> None:
    """Scale-out: a second worker on the first model's queue and a third on another model.
    A 3,000-item job for each model: every item exactly once, the first job's chunks spread
    over both of its workers, none of them scored by the other model's worker."""
    from service.dispatch import queue_for

    client, db = service["client"], service["db"]
    first_queue, other_queue = queue_for(str(service["model"])), queue_for(str(service["other"]))
    second = service["start"]("worker-second", "worker", "--loglevel", "WARNING")
    third = service["start"](
        "worker-other", "worker", "--model", str(service["other"]), "--loglevel", "WARNING"
    )
    # Every worker has its model loaded and takes tasks before the jobs are sent: a worker
    # still loading would hold its first chunks for the whole load and skew the spread.
    ready = [service["worker"].ready, second.ready, third.ready]
    _wait_for(lambda: all(p.exists() for p in ready), 600, "three workers to load their model")
    _wait_for(lambda: len(_queue_workers(db, first_queue)) >= 2, 60, "two workers on one queue")
    other_spec = {**SPEC, "name": "e2e-other", "model": str(service["other"])}
    client.create_classifier(json.dumps(other_spec), yaml=False)
    n = _sst2_jsonl(tmp_path / "sst2.jsonl", 3000)
    first = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e")
    second = client.submit_jsonl(tmp_path / "sst2.jsonl", "e2e-other")
    assert (first["model"], second["model"]) == (str(service["model"]), str(service["other"]))
    for job in (first, second):
        final = client.wait(job["id"], timeout=900)
        assert (final["state"], final["succeeded"], final["failed"]) == ("succeeded", n, 0)
        _exactly_once(client, job["id"], n)

    mine, theirs = _queue_workers(db, first_queue), _queue_workers(db, other_queue)
    owners = _chunk_owners(db, first["id"])
    assert set(owners) <= mine, (owners, mine)
    assert len(owners) == 2, f"both workers of the queue took chunks: {owners}"
    assert not set(owners) & theirs
    other_owners = _chunk_owners(db, second["id"])
    assert set(other_owners) <= theirs and len(theirs) == 1, (other_owners, theirs)
    print(f"\nchunks of the first model's job per worker: {sorted(owners.values())}")
