"""`labelq db upgrade` and `labelq keys create`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labelq.settings import Settings


def _upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from db.migrate import upgrade

    url = settings.resolved_database_url()
    upgrade(url, args.revision)
    print(f"database at {url.split('@')[-1]} is at revision {args.revision}")
    return 0


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    """Key management on the database directly (the operator's way in; admins can also use
    /v1/keys)."""
    from db.session import make_engine, make_sessionmaker
    from service import keys
    from service.keys import LOCAL

    factory = make_sessionmaker(make_engine(settings.resolved_database_url()))
    with factory() as s:
        if args.keys_command == "create":
            scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
            created = keys.create(s, args.name, args.tenant, scopes)
            print(created.key)
            print(
                f"key {created.id} ({created.prefix}...) for tenant {created.tenant}, scopes "
                f"{','.join(created.scopes)}: shown once, store it now",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for row in keys.listed(s, LOCAL):
                state = "revoked" if row.revoked_at else "live"
                print(
                    f"{row.id:>5}  {row.prefix}...  {row.tenant:<16}{','.join(row.scopes):<28}"
                    f"{state:<8}{row.name}  last used {row.last_used_at or '-'}"
                )
        else:
            row = keys.revoke(s, LOCAL, args.id)
            print(f"key {row.id} revoked")
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
    p.add_argument("--tenant", default="default")
    p.add_argument(
        "--scopes",
        default="read,submit,calibrate,admin",
        help="comma-separated: read, submit, calibrate, admin",
    )
    p.set_defaults(handler=_keys)
    p = keys.add_parser("list", help="keys (never the keys themselves)")
    p.set_defaults(handler=_keys)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", type=int)
    p.set_defaults(handler=_keys)
