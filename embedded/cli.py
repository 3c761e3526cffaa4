"""`labelq serve` (the API; with `--embedded`, an in-process worker on SQLite too) and `labelq
demo`, the README's first command."""

from __future__ import annotations

import argparse
from typing import Any

from labelq.settings import Settings


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from api.server import require_free, serve

    host, port = args.host or settings.api_host, args.port or settings.api_port
    if args.no_auth:
        settings.no_auth = True
    require_free(host, port)
    if args.embedded:
        from embedded.app import embedded_app

        with embedded_app(settings) as app:
            serve(app, settings, host, port)
    else:
        from api.app import create_app
        from service import wiring

        wiring.require_current(settings)
        serve(create_app(wiring.build_api(settings)), settings, host, port)
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from embedded.demo import run

    return run(settings, args.timeout)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--embedded",
        action="store_true",
        help="with an in-process worker on SQLite: no Redis needed",
    )
    p.add_argument(
        "--no-auth",
        action="store_true",
        help="serve loopback clients without an API key (their Host header a loopback name)",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser("demo", help="run sample reviews through a job on the embedded service")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(handler=_demo)
