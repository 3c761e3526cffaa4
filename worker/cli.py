"""`labelq worker`: a Celery worker holding one model, on that model's queue."""

from __future__ import annotations

import argparse
import os
from typing import Any

from labelq.errors import LabelqError
from labelq.settings import Settings


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from db.repo import queue_for

    model = args.model or settings.model
    if not model:
        raise LabelqError("no model: pass --model or set LABELQ_MODEL", field="model")
    # The task module reads settings from the environment; make the CLI's choices visible there.
    os.environ["LABELQ_MODEL"] = model
    if args.pool == "prefork":
        # A prefork child is daemonic: vLLM's engine must then run in the calling process.
        os.environ["LABELQ_IN_PROCESS_ENGINE"] = "true"
    from worker.tasks import app

    queue = queue_for(model)
    argv = [
        "worker",
        "--queues",
        queue,
        "--pool",
        args.pool,
        "--concurrency",
        str(args.concurrency or (2 if args.pool == "threads" else 1)),
        "--loglevel",
        args.loglevel,
        "--hostname",
        f"labelq-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    print(f"worker for model {model} on queue {queue}")
    app.worker_main(argv)
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
    p.set_defaults(handler=_worker)
