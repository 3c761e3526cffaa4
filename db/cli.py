"""`labelq db upgrade` and `labelq db backfill`: migrations of `LABELQ_DATABASE_URL`, then the
data backfills (`db.backfills`) in short resumable batches."""

from __future__ import annotations

import argparse
from typing import Any

from labelq.settings import Settings


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import backfill, upgrade

    url = settings.resolved_database_url()
    where = url.split("@")[-1]
    _wait_for(url, where, args.wait)
    upgrade(url, args.revision, fill=False)
    print(f"database at {where} is at revision {args.revision}", flush=True)
    if args.revision == "head" and not args.no_backfill:
        print(
            "backfilling existing rows in batches (safe to stop: the next run or the "
            "reconciler goes on from there)",
            flush=True,
        )
        print(f"{backfill(url, args.batch)} row(s) backfilled", flush=True)
    return 0


def _wait_for(url: str, where: str, seconds: float) -> None:
    """Until the database takes a connection, for at most `seconds`: a migration step started
    with the database (compose, an init container beside a restarting server) waits for it
    rather than failing the release."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError
    from tenacity import (
        RetryCallState,
        retry,
        retry_if_exception_type,
        stop_after_delay,
        wait_fixed,
    )

    from db.session import make_engine

    engine = make_engine(url)

    def note(state: RetryCallState) -> None:
        if state.attempt_number == 1:  # said once, at the first failure
            print(f"waiting up to {seconds:g} s for the database at {where}", flush=True)

    @retry(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_delay(seconds),
        wait=wait_fixed(1),
        before_sleep=note,
        reraise=True,
    )
    def connect() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        connect()
    finally:
        engine.dispose()


def _backfill(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import backfill

    print(f"{backfill(settings.resolved_database_url(), args.batch)} row(s) backfilled")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser(
        "upgrade",
        help="apply the migrations (one transaction each, indexes built concurrently), then "
        "backfill existing rows in short batches",
    )
    p.add_argument("revision", nargs="?", default="head")
    p.add_argument(
        "--no-backfill",
        action="store_true",
        help="schema only: leave the backfill to `labelq db backfill` or the reconciler",
    )
    p.add_argument("--batch", type=int, default=2000, help="rows per backfill transaction")
    p.add_argument(
        "--wait",
        type=float,
        default=60,
        help="seconds to wait for the database to take connections (default 60)",
    )
    p.set_defaults(handler=_upgrade)
    p = db.add_parser("backfill", help="run the data backfills to the end (resumable)")
    p.add_argument("--batch", type=int, default=2000, help="rows per transaction")
    p.set_defaults(handler=_backfill)
