"""Per-request dependencies: the app's state and authentication."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from api.dispatch import Dispatcher
from api.errors import Unauthorized
from api.metrics import Metrics
from db import repo
from labelq.settings import Settings


@dataclass
class AppState:
    settings: Settings
    factory: sessionmaker[Session]
    dispatcher: Dispatcher
    metrics: Metrics


def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.labelq
    return app_state


def _is_loopback(host: str | None) -> bool:
    if host in ("testclient", "localhost"):
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key(request: Request) -> None:
    """`Authorization: Bearer <key>`. With no keys stored the service is open, but only to
    clients on loopback (the embedded default on a laptop)."""
    st = state(request)
    header = request.headers.get("authorization", "")
    with st.factory() as s:
        if not repo.any_api_keys(s):
            if _is_loopback(request.client.host if request.client else None):
                return
            raise Unauthorized(
                "no API keys exist: only loopback clients are served until one "
                "is created with `labelq keys create`"
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "missing `Authorization: Bearer <key>` header", field="Authorization"
            )
        if not repo.check_api_key(s, token.strip()):
            raise Unauthorized("unknown or revoked API key", field="Authorization")
