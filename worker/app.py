"""The Celery app of a worker: Redis broker, late acks, one queue per model, and the tasks,
bound to a `WorkerRuntime` built from settings passed in (no settings at import time)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, TypeVar

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError

from labelq.settings import Settings
from service.dispatch import (
    CONTROL_QUEUE,
    TASK_FIT_CALIBRATION,
    TASK_RECONCILE,
    TASK_RUN_PIPELINE,
    TASK_SCORE_CHUNK,
)
from worker.runtime import WorkerRuntime, say_why

log = logging.getLogger(__name__)


def make_celery(settings: Settings, name: str = "labelq") -> Celery:
    app = Celery(name, broker=settings.broker_url)
    app.conf.update(
        # A task is acknowledged only after it ran, and a worker holds one at a time. Recovery
        # does not rest on redelivery, though: chunks are leased in SQL and the reconciler
        # re-sends what a dead worker held after one lease, not after the visibility timeout.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Must exceed the longest chunk, or Redis hands the task to a second worker meanwhile
        # (harmless with leases, but wasted work).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        # A task cut off from the broker runs on and writes under its lease; the threads pool
        # could not kill it anyway (`TaskPool does not implement kill_job`).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        # Results live in our database; Celery keeps no result state.
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=CONTROL_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {
                "task": TASK_RECONCILE,
                "schedule": settings.reconcile_interval,
                # Workers also sweep on their own (worker.runtime.Sweeper); a late task is
                # merely redundant: the reconciler's lock keeps sweeps one at a time.
                "options": {"queue": CONTROL_QUEUE, "expires": 10 * settings.reconcile_interval},
            }
        },
    )
    return app


def survive_broker_restarts() -> None:
    """A Redis restart while a task is in flight killed the worker: on the lost connection
    Celery closes the channel, kombu's redis transport then tries to put the unacked message
    back through a connection that is already gone, and the `AttributeError` it meets (the
    transport's client is None) is "unrecoverable" to Celery, which exits (kombu 5.7). Here it
    is the connection error it is, which Celery ignores before it reconnects. Nothing is lost:
    labelq does not rest on the broker giving messages back; the reconciler re-sends a chunk
    whose task vanished."""
    from kombu.transport import redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel._connparams, "labelq_patched", False):
        return
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise kombu_redis.get_redis_ConnectionError()("the broker connection is closed")
        return original(self, asynchronous=asynchronous)

    _connparams.labelq_patched = True  # type: ignore[attr-defined]
    channel._connparams = _connparams  # type: ignore[method-assign]


class _TaskArgs(BaseModel):
    """A task's arguments as this release sends them; `v`, the shape's version, is 1 (none
    sent so far: a task without it is version 1)."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1


T = TypeVar("T", bound=_TaskArgs)


class ChunkTaskArgs(_TaskArgs):
    job_id: str
    seq: int


class FitTaskArgs(_TaskArgs):
    calibration_id: int


class ReconcileTaskArgs(_TaskArgs):
    pass


class PipelineTaskArgs(_TaskArgs):
    name: str
    tenant: str = "default"


def _shaped(model: type[T], task: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> T | None:
    """`args` and `kwargs` as `model` (positional in its field order), or None, logged."""
    fields = [name for name in model.model_fields if name != "v"]
    if len(args) > len(fields):
        log.error("refused %s: %d arguments, this release takes %d", task, len(args), len(fields))
        return None
    try:
        return model.model_validate({**dict(zip(fields, args, strict=False)), **kwargs})
    except ValidationError as exc:
        shown = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        log.error("refused %s of a shape this release does not know (%s)", task, shown)
        return None


def worker_app(
    runtime: WorkerRuntime, ready_file: Path | None = None, why: Path | None = None
) -> Celery:
    """The Celery app whose tasks run on `runtime`; it starts the runtime when the worker is
    ready (touches `ready_file`, removes `why`) and stops it (engines included) when it shuts
    down."""
    survive_broker_restarts()
    app = make_celery(runtime.settings)
    retry_db = {
        "autoretry_for": (OperationalError, DBAPIError),
        "retry_backoff": 2,
        "retry_backoff_max": 60,
        "retry_jitter": True,
        "max_retries": 8,
    }

    # Tasks take any shape and check it: one this release does not know (a newer sender's, or
    # an older one's) is refused with a log line and acknowledged, never a crash or a retry
    # loop. What it stood for is in the database, and the reconciler sends it again as this
    # release knows it (a chunk, a fit) or the next tick comes (a pipeline).
    @app.task(name=TASK_SCORE_CHUNK, **retry_db)
    def score_chunk(*args: Any, **kwargs: Any) -> None:
        if (task := _shaped(ChunkTaskArgs, TASK_SCORE_CHUNK, args, kwargs)) is not None:
            runtime.score_chunk(task.job_id, task.seq)

    @app.task(name=TASK_FIT_CALIBRATION, **retry_db)
    def fit_calibration(*args: Any, **kwargs: Any) -> None:
        if (task := _shaped(FitTaskArgs, TASK_FIT_CALIBRATION, args, kwargs)) is not None:
            runtime.fit_calibration(task.calibration_id)

    @app.task(name=TASK_RECONCILE, ignore_result=True)
    def reconcile(*args: Any, **kwargs: Any) -> None:
        if _shaped(ReconcileTaskArgs, TASK_RECONCILE, args, kwargs) is not None:
            runtime.reconcile()

    @app.task(name=TASK_RUN_PIPELINE, ignore_result=True, **retry_db)
    def run_pipeline(*args: Any, **kwargs: Any) -> None:
        if (task := _shaped(PipelineTaskArgs, TASK_RUN_PIPELINE, args, kwargs)) is not None:
            runtime.run_pipeline(task.name, tenant=task.tenant)

    def _ready(**_: Any) -> None:
        runtime.start()
        if ready_file is not None:  # consuming now, its model loaded (`labelq worker` preloads)
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            ready_file.touch()
            if why is not None:
                why.unlink(missing_ok=True)
        runtime.metrics.ready.set(1)

    def _shutdown(**_: Any) -> None:
        runtime.metrics.ready.set(0)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
            say_why(why, "not ready: shutting down")
        runtime.stop()

    worker_ready.connect(_ready, weak=False)
    worker_shutdown.connect(_shutdown, weak=False)
    return app
