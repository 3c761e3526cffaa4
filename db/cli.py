"""`labelq db upgrade` and `labelq keys create`."""

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


def _create_key(args: argparse.Namespace, settings: Settings) -> int:
    from db.session import make_engine, make_sessionmaker
    from service import keys

    factory = make_sessionmaker(make_engine(settings.resolved_database_url()))
    with factory() as s:
        print(keys.create(s, args.name))
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    db = sub.add_parser("db", help="database migrations").add_subparsers(
        dest="db_command", required=True
    )
    p = db.add_parser("upgrade", help="apply Alembic migrations")
    p.add_argument("revision", nargs="?", default="head")
    p.set_defaults(handler=_upgrade)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create an API key and print it (shown once)")
    p.add_argument("--name", default="default")
    p.set_defaults(handler=_create_key)
