"""`labelq worker` (a Celery worker holding one model, on that model's queue) and `labelq beat`
(the schedule that runs the reconciler)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labelq.errors import LabelqError
from labelq.settings import Settings


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from service import wiring
    from service.dispatch import CONTROL_QUEUE
    from worker.app import worker_app
    from worker.runtime import WorkerRuntime

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
    if settings.ready_file:
        settings.ready_file.unlink(missing_ok=True)  # left by an earlier run
    ready = True
    if (settings.preload or settings.ready_file) and args.pool != "prefork":
        print(f"loading {model} before taking tasks", flush=True)
        try:
            runtime.engines.scorer_for(model)  # the ready file follows once Celery consumes
        except Exception as exc:
            # Take tasks anyway: its jobs then fail with this error (after the engine-failure
            # retries) instead of waiting for a worker that never comes. Never ready.
            print(f"could not load {model}: {exc}; not ready", file=sys.stderr, flush=True)
            ready = False
    app = worker_app(runtime, ready_file=settings.ready_file if ready else None)
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
