"""`labelq db upgrade`: Alembic migrations of `LABELQ_DATABASE_URL`."""

from __future__ import annotations

import argparse
from typing import Any

from labelq.settings import Settings


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import upgrade

    url = settings.resolved_database_url()
    upgrade(url, args.revision)
    print(f"database at {url.split('@')[-1]} is at revision {args.revision}")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", help="apply Alembic migrations")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=_upgrade)
