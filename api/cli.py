"""`labelq keys`: API keys, managed on the database directly (the operator's way in; admin keys
can also use /v1/keys). `labelq serve` and `labelq demo` are the embedded package's: they
start this app, and the embedded one with a worker too."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from labelq.settings import Settings


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from service import keys, wiring
    from service.context import Ctx

    services = wiring.build(settings)
    ctx = Ctx.system(services)
    try:
        if args.keys_command == "create":
            scopes = [x.strip() for x in args.scopes.split(",") if x.strip()]
            body = keys.KeyCreate(name=args.name, tenant=args.tenant, scopes=scopes)
            created = keys.create(ctx, body)
            print(created.key)
            print(
                f"key {created.id} ({created.prefix}...) for tenant {created.tenant}, scopes "
                f"{','.join(created.scopes)}: shown once, store it now",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for row in keys.listed(ctx):
                state = "revoked" if row.revoked_at else "live"
                print(
                    f"{row.id:>5}  {row.prefix}...  {row.tenant:<16}{','.join(row.scopes):<28}"
                    f"{state:<8}{row.name}  last used {row.last_used_at or '-'}"
                )
        else:
            revoked = keys.revoke(ctx, args.id)
            print(f"key {revoked.id} revoked")
    finally:
        wiring.close(services)
    return 0


def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    from service import erase, wiring
    from service.context import Ctx

    if args.tenant_name != args.confirm:
        print(f"error: erasing removes every row of {args.tenant_name!r}; say it again with "
              f"--confirm {args.tenant_name}", file=sys.stderr)  # fmt: skip
        return 2
    services = wiring.build(settings)
    try:
        done = erase.erase_tenant(Ctx.of(services, args.tenant_name), wait=args.wait)
    finally:
        wiring.close(services)
    print(done.model_dump_json(indent=2))
    if not done.done:
        print(f"jobs still scoring: {', '.join(done.waiting_on)}; run it again",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    tenants = sub.add_parser("tenants", help="tenants' data").add_subparsers(
        dest="tenants_command", required=True
    )
    p = tenants.add_parser(
        "erase",
        help="erase every row of a tenant: keys, jobs, items, results, classifiers, "
        "calibrations, pipelines, webhooks (idempotent: run again to go on)",
    )
    p.add_argument("tenant_name", metavar="NAME")
    p.add_argument("--confirm", required=True, metavar="NAME", help="the same name again")
    p.add_argument("--wait", type=float, default=300, help="seconds to wait for jobs still scoring")
    p.set_defaults(handler=_tenants)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="keys_command", required=True
    )
    p = keys.add_parser("create", help="create an API key and print it (shown once)")
    p.add_argument("--name", default="default")
    p.add_argument(
        "--tenant",
        required=True,
        help="whose key: a tenant's name (`default`'s admin keys manage every tenant)",
    )
    p.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: read, submit, calibrate, pipelines, metrics, admin",
    )
    p.set_defaults(handler=_keys)
    p = keys.add_parser("list", help="keys (never the keys themselves)")
    p.set_defaults(handler=_keys)
    p = keys.add_parser("revoke", help="revoke a key by id")
    p.add_argument("id", type=int)
    p.set_defaults(handler=_keys)
