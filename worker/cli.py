"""`labelq worker` (a Celery worker holding one model, on that model's queue) and `labelq beat`
(the schedule that runs the reconciler)."""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelq.errors import LabelqError
from labelq.settings import Settings

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from service import wiring
    from service.dispatch import CONTROL_QUEUE
    from worker.app import worker_app
    from worker.runtime import WorkerRuntime, say_why

    model = args.model or settings.model
    if not model:
        raise LabelqError("no model: pass --model or set LABELQ_MODEL", field="model")
    if args.print_queue:  # e.g. for a KEDA ScaledObject's listName
        from service.dispatch import queue_for

        print(queue_for(model))
        return 0
    # A prefork child is daemonic: vLLM's engine must then run in the calling process.
    settings = settings.model_copy(
        update={"model": model, "in_process_engine": args.pool == "prefork"}
    )
    wiring.require_current(settings)
    runtime = WorkerRuntime(wiring.build(settings), model)
    ready_file = settings.ready_file
    why = ready_file.with_name(ready_file.name + ".why") if ready_file else None
    if ready_file is not None:
        ready_file.unlink(missing_ok=True)  # left by an earlier run
        say_why(why, f"not ready: loading {model}")
    if settings.worker_metrics_port:
        runtime.metrics.serve(settings.worker_metrics_port)
    if (settings.preload or ready_file) and args.pool != "prefork":
        # Nothing is consumed before the model is here: while it cannot be loaded the worker
        # says why (its log, `why`, the job's warnings) and tries again; its queue's jobs wait
        # for a worker that can, instead of failing on this one.
        print(f"loading {model} before taking tasks", flush=True)
        _load_or_leave(runtime, why)
    app = worker_app(runtime, ready_file=ready_file, why=why)
    argv = [
        "worker",
        "--queues",
        f"{runtime.queue},{CONTROL_QUEUE}",
        "--pool",
        args.pool,
        "--concurrency",
        str(args.concurrency or (2 if args.pool == "threads" else 1)),
        "--loglevel",
        args.loglevel,
        "--hostname",
        f"labelq-{runtime.name.replace(':', '-')}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    print(f"worker {runtime.name} for model {model} on queue {runtime.queue}", flush=True)
    app.worker_main(argv)
    return 0


def _load_or_leave(runtime: WorkerRuntime, why: Path | None) -> None:
    """`runtime.load_model`; a SIGTERM meanwhile (a pod deleted, `compose down`) ends the
    process at once, its load record removed (no job goes on saying it tries)."""
    from service import workers

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        runtime.load_model(why)
    except SystemExit:
        with contextlib.suppress(Exception):
            workers.leave(runtime.ctx, runtime.name)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _beat(args: argparse.Namespace, settings: Settings) -> int:
    from service import wiring
    from worker.app import make_celery
    from worker.scheduler import DatabaseScheduler

    wiring.require_current(settings)
    DatabaseScheduler.settings = settings
    app = make_celery(settings, "labelq-beat")
    print(
        f"beat: reconciler every {settings.reconcile_interval:g} s, pipelines from the "
        "database; one beat sends at a time (a lock in the database)",
        flush=True,
    )
    app.start(
        ["beat", "--loglevel", args.loglevel, "--scheduler", "worker.scheduler:DatabaseScheduler"]
    )
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("worker", help="run a Celery worker that scores chunks with one model")
    p.add_argument("--model", help="model path or hub id (default: LABELQ_MODEL)")
    p.add_argument(
        "--pool",
        choices=["solo", "prefork", "threads"],
        default="threads",
        help="threads (default): two tasks share the process's one engine, so one task's SQL "
        "overlaps the other's scoring; solo: one task at a time; prefork: a child process",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="tasks at once (default 1; threads: 2, so SQL overlaps scoring on one engine)",
    )
    p.add_argument("--loglevel", default="INFO")
    p.add_argument(
        "--print-queue", action="store_true", help="print the model's queue name and exit"
    )
    p.set_defaults(handler=_worker)

    p = sub.add_parser("beat", help="run the schedule (the reconciler) for the workers")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(handler=_beat)
