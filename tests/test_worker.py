"""The worker's Celery app (without a broker), and the order chunk tasks are taken in (the
embedded queue, and real Redis in the slow tier)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_a_channel_closed_after_the_broker_went_away_is_a_connection_error() -> None:
    """A Redis restart with a task in flight: Celery closes the channel, kombu tries to give
    the unacked message back through a transport whose client is gone. That must be a
    connection error (Celery ignores those and reconnects), not the AttributeError that made
    Celery stop the worker as "unrecoverable"."""
    from kombu.common import ignore_errors
    from kombu.transport import redis as kombu_redis

    from worker.app import survive_broker_restarts

    survive_broker_restarts()
    survive_broker_restarts()  # once is enough: not wrapped twice
    gone = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(kombu_redis.get_redis_ConnectionError()):
        kombu_redis.Channel._connparams(gone)
    transport = kombu_redis.Transport
    assert issubclass(kombu_redis.get_redis_ConnectionError(), transport.connection_errors)
    connection = SimpleNamespace(
        connection_errors=transport.connection_errors, channel_errors=transport.channel_errors
    )
    # What Celery's consumer does on a lost connection: the error is ignored, not raised
    # (this raised AttributeError before).
    ignore_errors(connection, kombu_redis.Channel._connparams, gone)


def test_the_embedded_dispatcher_runs_a_jobs_first_chunks_first() -> None:
    """A 40-chunk job queued first, then a 3-chunk one: the small job's chunks run after the
    big job's first 4 (priority step 0), not after all 40."""
    from worker.loops import ChunkTask, ThreadDispatcher

    d = ThreadDispatcher()  # not started: its queue alone
    d.dispatch("big", "q", list(range(40)))
    d.dispatch("small", "q", [0, 1, 2])
    order = [d.take() for _ in range(43)]
    assert all(isinstance(t, ChunkTask) for t in order)
    jobs = [(t.job_id, t.seq) for t in order if isinstance(t, ChunkTask)]
    assert jobs[:7] == [("big", 0), ("big", 1), ("big", 2), ("big", 3)] + [
        ("small", s) for s in range(3)
    ]
    assert [seq for job, seq in jobs if job == "big"] == list(range(40)), "each job in order"


@pytest.mark.slow
def test_on_redis_a_small_job_behind_a_large_one_is_taken_within_a_bounded_wait() -> None:
    """Real Redis, as a worker pops it: a 100k-item job (391 chunks of 256) is queued first,
    then a 10-item job of another tenant. The small job's chunk is taken after at most the
    big job's 4 step-0 chunks: its wait is bounded by 4 chunks per job queued ahead (and the
    chunks being scored), not by the 391."""
    import uuid

    from labelq.settings import Settings
    from service.dispatch import CeleryDispatcher

    d = CeleryDispatcher(Settings().broker_url)
    queue = f"labelq.test-fairness.{uuid.uuid4().hex[:8]}"
    d.dispatch("big", queue, list(range(391)))
    d.dispatch("small", queue, [0])
    taken: list[str] = []
    with d.app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue, no_ack=True)
        try:
            while len(taken) < 392:
                taken.append(simple.get(timeout=5).headers["argsrepr"])
        finally:
            simple.close()
    assert taken.index("['small', 0]") == 4, taken[:8]
    big = [int(t.split(", ")[1].rstrip("]")) for t in taken if "big" in t]
    assert sorted(big) == list(range(391)), "nothing lost"


def test_a_task_of_a_shape_this_release_does_not_know_is_refused_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Across a rolling upgrade a worker may get a task an older or newer sender shaped: a
    known one runs, by position or by name; extra arguments, a wrong type or a newer shape
    version are refused with a log line naming the task (acknowledged: the database still
    holds the work, and the reconciler sends it again as this release knows it)."""
    from labelq.settings import Settings
    from service.dispatch import TASK_FIT_CALIBRATION, TASK_RUN_PIPELINE, TASK_SCORE_CHUNK
    from worker.app import worker_app

    calls: list[tuple[str, tuple[object, ...]]] = []
    runtime = SimpleNamespace(
        settings=Settings(),
        score_chunk=lambda *a: calls.append(("chunk", a)),
        fit_calibration=lambda *a: calls.append(("fit", a)),
        run_pipeline=lambda name, tenant: calls.append(("pipeline", (name, tenant))),
    )
    app = worker_app(runtime)  # type: ignore[arg-type]
    chunk, fit, pipeline = (app.tasks[n] for n in (TASK_SCORE_CHUNK, TASK_FIT_CALIBRATION,
                                                      TASK_RUN_PIPELINE))  # fmt: skip
    chunk.run("j1", 3)
    chunk.run(job_id="j2", seq=0, v=1)
    fit.run(7)
    pipeline.run("nightly")
    pipeline.run("nightly", tenant="acme")
    assert calls == [
        ("chunk", ("j1", 3)),
        ("chunk", ("j2", 0)),
        ("fit", (7,)),
        ("pipeline", ("nightly", "default")),
        ("pipeline", ("nightly", "acme")),
    ]
    calls.clear()
    with caplog.at_level("ERROR", logger="worker.app"):
        chunk.run("j1", 3, "an argument from a newer release")
        chunk.run("j1", seq="first")
        chunk.run("j1", 3, v=2)
        pipeline.run("nightly", priority="high")
    assert calls == [], "nothing ran"
    refused = [r.getMessage() for r in caplog.records]
    assert len(refused) == 4 and all("refused labelq." in m for m in refused), refused
    assert "3 arguments, this release takes 2" in refused[0] and "seq" in refused[1]
