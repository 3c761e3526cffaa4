"""Scoring a chunk (service/chunks.py) on the fake backend: what each kind of fault ends in."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.classifiers import store_version
from db.models import Chunk, JobItem, as_utc, utcnow
from labelq.backends.fake import FakeBackend
from labelq.scoring import Item, Scorer
from labelq.settings import Settings
from labelq.spec import parse_spec
from service import ingest, jobs, workers
from service.chunks import ChunkRunner, EngineFailure, LeaseKeeper, score_items
from service.dispatch import queue_for
from service.reconcile import sweep
from tests.conftest import Recorder, system

SPEC = {
    "name": "chunks",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}
Factory = sessionmaker[Session]


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"model": "fake", "chunk_size": 4, "max_chunk_attempts": 3}
    return Settings(**{**values, **overrides})


def _job(factory: Factory, texts: list[str], settings: Settings) -> str:
    with factory.begin() as s:
        store_version(s, parse_spec(SPEC), tenant="default")
    items = [Item(custom_id=f"c{i}", fields={"text": t}, line=i + 1) for i, t in enumerate(texts)]
    ctx = system(factory, settings).acting_for("default")
    return ingest.submit(ctx, ingest.JobRequest(classifier="chunks"), items)


def _runner(factory: Factory, settings: Settings, scorer_for: Any, **kw: Any) -> ChunkRunner:
    return ChunkRunner(system(factory, settings), scorer_for, "w", **kw)


def _status(factory: Factory, job_id: str, settings: Settings) -> jobs.JobStatus:
    return jobs.status(system(factory, settings), job_id)


def _errors(factory: Factory, job_id: str) -> list[str | None]:
    with factory() as s:
        query = select(JobItem.error).where(JobItem.job_id == job_id).order_by(JobItem.idx)
        return list(s.scalars(query))


class Engines:
    """A model's engine as a worker holds it: one until it is discarded, then a new one."""

    def __init__(self, **faults: Any) -> None:
        self.faults = faults
        self.made: list[FakeBackend] = []
        self.discard()

    def scorer_for(self, _: str = "fake") -> Scorer:
        return Scorer(self.made[-1])

    def discard(self, _: str = "fake", __: Any = None) -> None:
        self.made.append(FakeBackend(**self.faults))


def test_an_item_the_engine_refuses_fails_alone() -> None:
    engines = Engines(fail_marker="poison")
    items = [Item(fields={"text": t}) for t in ["fine", "poison pill", "also fine"]]
    out = score_items(engines.scorer_for, engines.discard, parse_spec(SPEC), items)
    assert [type(r).__name__ for r in out] == ["ItemResult", "ItemError", "ItemResult"]
    assert "refuses" in out[1].error and out[1].kind == "engine"  # type: ignore[union-attr]


def test_an_engine_that_fails_every_item_is_the_engines_fault() -> None:
    engines = Engines(down=True)
    with pytest.raises(EngineFailure, match="fake engine is down"):
        items = [Item(fields={"text": "x"})] * 3
        score_items(engines.scorer_for, engines.discard, parse_spec(SPEC), items)


def test_a_poison_item_that_kills_the_engine_fails_alone(factory: Factory) -> None:
    """An item that kills the engine (every later call fails too, as vLLM's EngineCore raises
    EngineDeadError once it died) fails alone: the chunk is split and each half scored on a
    fresh engine, down to that item. The job ends `partial`, counted by cause, every other
    item scored once, and no other chunk is failed because of it."""
    settings = _settings()
    texts = [f"fine {i}" for i in range(10)]
    texts[5] = "poison pill"
    job_id = _job(factory, texts, settings)  # chunks of 4, 4, 2: the poison in chunk 1
    engines = Engines(poison="poison")
    runner = _runner(factory, settings, engines.scorer_for, discard=engines.discard)
    assert [runner.run(job_id, seq) for seq in range(3)] == [True, True, True]
    status = _status(factory, job_id, settings)
    assert (status.state, status.succeeded, status.failed) == ("partial", 9, 1)
    assert status.failures == {"engine": 1}
    errors = _errors(factory, job_id)
    assert errors[5] is not None and "the engine failed on this item" in errors[5]
    assert [e for k, e in enumerate(errors) if k != 5] == [None] * 9
    scored = sum(engine.calls for engine in engines.made)
    assert len(engines.made) <= 6, "one fresh engine per failed half, not per item"
    assert scored < 20, f"{scored} engine calls for 10 items"


def test_chunk_with_a_bad_item_is_written_with_its_error(factory: Factory) -> None:
    settings = _settings()
    job_id = _job(factory, ["good", "poison", "positive", "x"], settings)
    runner = _runner(factory, settings, lambda _: Scorer(FakeBackend(fail_marker="poison")))
    assert runner.run(job_id, 0)
    status = _status(factory, job_id, settings)
    assert (status.state, status.succeeded, status.failed) == ("partial", 3, 1)
    assert "the engine failed on this item" in (_errors(factory, job_id)[1] or "")


def _make_due(factory: Factory) -> None:
    with factory.begin() as s:
        s.execute(update(Chunk).values(available_at=utcnow() - timedelta(seconds=1)))


def test_engine_failure_is_retried_with_backoff_then_fails_the_job(factory: Factory) -> None:
    settings = _settings(engine_retry_backoff=30)
    job_id = _job(factory, [f"t{i}" for i in range(10)], settings)  # chunks of 4, 4, 2
    discarded: list[str] = []
    runner = _runner(
        factory,
        settings,
        lambda _: Scorer(FakeBackend(down=True)),
        discard=lambda model, _: discarded.append(model),
    )
    recorder = Recorder()
    sweeper = system(factory, settings, recorder)
    for attempt in range(1, 4):
        assert not runner.run(job_id, 0)
        with factory() as s:
            chunk = s.scalars(select(Chunk).where(Chunk.job_id == job_id, Chunk.seq == 0)).one()
            if attempt < 3:
                assert (chunk.state, chunk.attempts, chunk.owner) == ("pending", attempt, None)
                assert chunk.available_at is not None
                wait = (as_utc(chunk.available_at) - utcnow()).total_seconds()
                # backoff doubles: 30 s, then 60 s
                assert 30 * 2 ** (attempt - 1) - 5 < wait <= 30 * 2 ** (attempt - 1)
                assert chunk.last_error == "RuntimeError: fake engine is down"
        if attempt < 3:
            sent = len(recorder.sent)
            sweep(sweeper)
            assert len(recorder.sent) == sent, "not sent again before it is due"
            _make_due(factory)
            sweep(sweeper)
            assert recorder.sent[sent:] == [(job_id, [0])]
    status = _status(factory, job_id, settings)
    assert (status.state, status.succeeded, status.failed) == ("failed", 0, 10)
    errors = _errors(factory, job_id)
    assert errors[0] == "gave up after 3 attempts: RuntimeError: fake engine is down"
    assert errors[9] == ("not run: the engine failed on chunk 0: RuntimeError: fake engine is down")
    assert set(discarded) == {"fake"} and len(discarded) >= 3, (
        "a failed engine is dropped so the next try reloads it"
    )


def test_a_model_that_cannot_load_ends_the_job(factory: Factory) -> None:
    settings = _settings(max_chunk_attempts=1)
    job_id = _job(factory, ["a", "b"], settings)

    def cannot_load(model: str) -> Scorer:
        raise OSError(f"{model} is not a model directory")

    assert not _runner(factory, settings, cannot_load).run(job_id, 0)
    status = _status(factory, job_id, settings)
    assert status.state == "failed"
    assert "model fake could not be loaded: fake is not a model directory" in (
        _errors(factory, job_id)[0] or ""
    )


def test_the_lease_is_renewed_while_scoring(factory: Factory) -> None:
    settings = _settings(lease_seconds=0.6)
    job_id = _job(factory, ["a"], settings)

    class Slow(FakeBackend):
        def token_logprobs(self, requests: Any) -> Any:
            time.sleep(1.5)  # longer than the lease: only renewal keeps the chunk ours
            return super().token_logprobs(requests)

    assert _runner(factory, settings, lambda _: Scorer(Slow())).run(job_id, 0)
    assert _status(factory, job_id, settings).state == "succeeded"


def test_a_lease_keeper_stops_renewing_once_the_claim_is_lost(factory: Factory) -> None:
    from db import chunks

    settings = _settings()
    job_id = _job(factory, ["a"], settings)
    with factory.begin() as s:
        work = chunks.claim_chunk(s, job_id, 0, "me", lease_seconds=0.3, max_attempts=3)
    assert work is not None
    with factory.begin() as s:
        s.execute(update(Chunk).values(owner="someone-else"))
    with LeaseKeeper(system(factory, settings), work, 0.3) as keeper:
        time.sleep(0.5)
        assert not keeper._thread.is_alive()


def test_a_job_waiting_for_a_worker_says_so(factory: Factory) -> None:
    from service import workers

    settings = _settings()
    job_id = _job(factory, ["a"], settings)
    warnings = _status(factory, job_id, settings).warnings
    assert len(warnings) == 1 and "no worker has been seen on queue labelq.fake." in warnings[0]
    ctx = system(factory, settings)
    workers.beat(ctx, "w1", queue_for("fake"), "fake")
    assert _status(factory, job_id, settings).warnings == []
    assert [q.live_workers for q in workers.queues(ctx)] == [1]


def test_an_api_process_reads_live_workers_at_most_once_a_second(factory: Factory) -> None:
    from service import workers

    settings = _settings()
    job_id = _job(factory, ["a"], settings)
    now = [0.0]
    ctx = system(factory, settings)
    ctx.services.live_queues = workers.LiveQueues(ttl=1.0, timer=lambda: now[0])
    assert jobs.status(ctx, job_id).warnings  # none seen yet
    workers.beat(ctx, "w1", queue_for("fake"), "fake")
    now[0] = 0.9  # the answer read at 0 still stands
    assert jobs.status(ctx, job_id).warnings
    now[0] = 1.0
    assert jobs.status(ctx, job_id).warnings == []


def test_a_hung_engine_is_killed_and_its_chunk_scored_again(factory: Factory) -> None:
    """An engine call that never returns (a wedged GPU, a stopped engine core) has a deadline
    (LABELQ_SCORE_TIMEOUT per item, at least the floor): past it the engine is killed, the
    chunk handed back, and scored on the next try by a new engine."""
    settings = _settings(score_timeout=0.05, score_timeout_floor=0.5, engine_retry_backoff=0)
    job_id = _job(factory, ["fine", "stuck here", "fine too"], settings)
    engines = Engines(hang="stuck")
    killed: list[str] = []

    def kill(model: str, _: Scorer) -> None:
        killed.append(model)
        engines.made[-1].released.set()  # what killing its processes does to the call
        engines.faults = {}  # the next engine answers
        engines.discard(model)

    runner = _runner(factory, settings, engines.scorer_for, discard=engines.discard, kill=kill)
    start = time.monotonic()
    assert not runner.run(job_id, 0)
    assert time.monotonic() - start < 10
    assert killed == ["fake"]
    assert "did not answer" in (runner.health.trouble or "")  # the queue is told: no service
    with factory() as s:
        chunk = s.scalars(select(Chunk).where(Chunk.job_id == job_id)).one()
        assert chunk.state == "pending" and "did not answer within 0.5 s" in (
            chunk.last_error or ""
        )
    _make_due(factory)
    assert runner.run(job_id, 0)
    assert runner.health.trouble is None  # a new engine scored: served again
    status = _status(factory, job_id, settings)
    assert (status.state, status.succeeded, status.failed) == ("succeeded", 3, 0)


def test_a_stalled_chunk_lets_its_lease_go() -> None:
    """Past its engine call's time and a lease more, the lease keeper stops renewing: if the
    watchdog itself is stuck, another worker still gets the chunk."""
    from service.chunks import Progress

    progress = Progress(grace=0.1)
    assert not progress.stalled()
    progress.begin(0.1)
    assert not progress.stalled()
    time.sleep(0.25)
    assert progress.stalled()
    progress.end()
    assert not progress.stalled(), "between engine calls (a model loading) is not a stall"


def test_a_worker_whose_engine_is_down_leaves_the_worker_list_until_it_scores_again(
    factory: Factory,
) -> None:
    """While its engine is killed and restarting, a worker's queue must not look served (for
    /readyz, a job's status and the reconciler): its heartbeat leaves at once, not a stale
    period later, and beats again once the engine is back."""
    from service.chunks import Health
    from worker.runtime import Heartbeat

    ctx = system(factory, _settings())
    health = Health()
    beat = Heartbeat(ctx, "w1", "q1", "fake", interval=3600, health=health)

    def served() -> list[int]:
        return [q.live_workers for q in workers.queues(ctx) if q.queue == "q1"]

    def soon(expected: list[int]) -> bool:
        deadline = time.monotonic() + 5
        while served() != expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return served() == expected

    beat.start()
    try:
        assert served() == [1]
        health.down("the engine did not answer within 120 s: restarting")
        assert soon([])
        health.up()
        assert soon([1])
    finally:
        beat.stop()
    assert served() == []


def test_a_killed_engine_never_starts_again() -> None:
    """A call left running behind a killed engine (its deadline passed while it waited) must
    not start a new engine in that dead one: nobody would stop it, and its start would race
    the owner's new engine for the same child processes."""
    from labelq.backends.vllm_backend import VllmBackend
    from labelq.errors import EngineStopped

    backend = VllmBackend("/no/such/model", _settings())
    backend.kill()
    assert backend.stopped
    with pytest.raises(EngineStopped, match="does not restart"):
        backend.load()
    closed = VllmBackend("/no/such/model", _settings())
    closed.close(final=True)
    with pytest.raises(EngineStopped):
        closed.load()


class _Loading:
    """Stands in for VllmBackend in worker.engine: a load that waits until `release` is set."""

    release = threading.Event()
    loads: ClassVar[list[str]] = []

    def __init__(self, model: str, _: Settings) -> None:
        self.model, self.stopped, self.killed, self.closed = model, False, False, False

    def load(self) -> None:
        _Loading.loads.append(self.model)
        assert _Loading.release.wait(10)

    def kill(self) -> None:
        self.stopped = self.killed = True

    def close(self, *, final: bool = False) -> None:
        self.closed, self.stopped = True, final


def test_engines_kill_and_discard_touch_only_the_engine_that_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killing a hung engine does not wait behind the load of its replacement, and a failure
    reported on an engine replaced since (a call that timed out behind the hung one) stops that
    old engine only, never the new one."""
    import threading

    from worker import engine as engine_module

    monkeypatch.setattr(engine_module, "VllmBackend", _Loading)
    _Loading.loads.clear()
    _Loading.release.set()
    engines = engine_module.Engines(_settings())
    old = engines.scorer_for("m")
    assert isinstance(old, engine_module.SerialScorer)
    engines.kill("m", old)
    assert old.vllm.killed  # type: ignore[attr-defined]
    _Loading.release.clear()
    loader = threading.Thread(target=engines.scorer_for, args=("m",))
    loader.start()
    while len(_Loading.loads) < 2:
        time.sleep(0.01)
    engines.kill("m", old)  # while the new one loads: must return, not wait for the load
    engines.discard("m", old)
    assert loader.is_alive(), "the kill and the discard returned while the load still ran"
    _Loading.release.set()
    loader.join(10)
    new = engines.scorer_for("m")
    assert new is not old and _Loading.loads == ["m", "m"]
    engines.discard("m", old)  # a late report about the old engine
    assert engines.scorer_for("m") is new and not new.vllm.stopped  # type: ignore[attr-defined]
    engines.discard("m", new)
    assert new.vllm.stopped  # type: ignore[attr-defined]
    assert engines.scorer_for("m") is not new and len(_Loading.loads) == 3


def test_a_call_whose_engine_was_killed_under_it_is_scored_on_the_new_one() -> None:
    """A batch that reaches an engine killed meanwhile (EngineStopped) is scored on the
    model's new engine, whole: no item is at fault, and no bisecting."""
    from labelq.errors import EngineStopped

    made: list[str] = []

    class Stopped:
        def score_batch(self, *_: Any) -> Any:
            raise EngineStopped("the engine of fake was stopped: it does not restart")

    def engine() -> Any:
        made.append("engine")
        return Stopped() if len(made) == 1 else Scorer(FakeBackend())

    restarts: list[str] = []
    items = [Item(fields={"text": t}) for t in ["good", "fine", "great"]]
    out = score_items(engine, lambda: restarts.append("r"), parse_spec(SPEC), items)
    assert [type(r).__name__ for r in out] == ["ItemResult"] * 3
    assert made == ["engine", "engine"] and restarts == []
