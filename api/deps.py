"""Per-request dependencies: the app's state, a database session, and authentication."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Unauthorized
from api.metrics import Metrics
from labelq.settings import Settings
from service import keys
from service.dispatch import Dispatcher


@dataclass
class AppState:
    settings: Settings
    factory: sessionmaker[Session]
    dispatcher: Dispatcher
    metrics: Metrics


def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.labelq
    return app_state


StateDep = Annotated[AppState, Depends(state)]


def session(st: StateDep) -> Iterator[Session]:
    """One session per request (as the FastAPI template's `get_db`). The use case it is handed
    to commits; whatever it did not commit is rolled back when the request ends."""
    with st.factory() as s:
        yield s


SessionDep = Annotated[Session, Depends(session)]


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_key(request: Request, s: SessionDep) -> None:
    """`Authorization: Bearer <key>`. With no keys stored the service is open, but only to
    clients on loopback (the embedded default on a laptop)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    allowed = keys.authorise(s, bearer)
    if allowed is None:
        if _is_loopback(request.client.host if request.client else None):
            return
        raise Unauthorized(
            "no API keys exist: only loopback clients are served until one "
            "is created with `labelq keys create`"
        )
    if not bearer:
        raise Unauthorized("missing `Authorization: Bearer <key>` header", field="Authorization")
    if not allowed:
        raise Unauthorized("unknown or revoked API key", field="Authorization")
