"""Per-request dependencies: the app's state, a database session, and authentication."""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Forbidden, Unauthorized
from api.metrics import Metrics
from labelq.errors import RateLimited
from labelq.settings import Settings
from service import keys
from service.dispatch import Dispatcher
from service.keys import Principal


class RateLimiter:
    """At most `per_minute` events per identity in any 60 s (a sliding window, per API
    process)."""

    def __init__(self, per_minute: int):
        self.per_minute = per_minute
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, who: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._seen.setdefault(who, deque())
            while window and window[0] <= now - 60:
                window.popleft()
            if len(window) >= self.per_minute:
                raise RateLimited(
                    f"more than {self.per_minute} submissions a minute "
                    "(LABELQ_SUBMISSIONS_PER_MINUTE)",
                    retry_after=60 - (now - window[0]),
                )
            window.append(now)


@dataclass
class AppState:
    settings: Settings
    factory: sessionmaker[Session]
    dispatcher: Dispatcher
    metrics: Metrics
    submissions: RateLimiter = field(default_factory=lambda: RateLimiter(120))


def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.labelq
    return app_state


StateDep = Annotated[AppState, Depends(state)]


async def session(st: StateDep) -> AsyncIterator[Session]:
    """One session per request (as the FastAPI template's `get_db`). The use case it is handed
    to commits; whatever it did not commit is rolled back when the request ends.

    Async on purpose: a sync `yield` dependency is closed on a threadpool thread, and with every
    thread busy waiting for a pooled connection, the sessions that would give theirs back could
    not close (measured: 200 concurrent clients all timed out). Closing here, on the event loop,
    only hands the connection back to the pool."""
    s = st.factory()
    try:
        yield s
    finally:
        s.close()


SessionDep = Annotated[Session, Depends(session)]


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def submission_quota(request: Request, st: StateDep) -> None:
    """Counts a submission against its API key's (or, with no keys, its client's) rate."""
    token = request.headers.get("authorization", "")
    who = (
        hashlib.sha256(token.encode()).hexdigest()
        if token
        else (request.client.host if request.client else "unknown")
    )
    st.submissions.take(who)


def principal(request: Request, st: StateDep) -> Principal:
    """Who is asking: `Authorization: Bearer <key>` names a tenant and scopes. With no keys
    stored the service is open, but only to clients on loopback (the embedded default).

    Its own short session, closed before the route runs: a connection held through the whole
    request while the route takes another is how a pool runs dry under load (measured: every
    request of 200 concurrent clients timed out)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    with st.factory() as s:
        found = keys.authenticate(s, bearer)
    if found is None:
        if _is_loopback(request.client.host if request.client else None):
            return keys.LOCAL
        raise Unauthorized(
            "no API keys exist: only loopback clients are served until one "
            "is created with `labelq keys create`"
        )
    if not bearer:
        raise Unauthorized("missing `Authorization: Bearer <key>` header", field="Authorization")
    if found.key_id is None:
        raise Unauthorized("unknown or revoked API key", field="Authorization")
    return found


def scoped(scope: str) -> Callable[[Principal], Principal]:
    def check(who: Principal = Depends(principal)) -> Principal:
        if not who.can(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope", field="Authorization")
        return who

    return check


# Row ids and versions in paths: 64-bit, as the database stores them.
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]

Reader = Annotated[Principal, Depends(scoped("read"))]
Submitter = Annotated[Principal, Depends(scoped("submit"))]
Calibrator = Annotated[Principal, Depends(scoped("calibrate"))]
Admin = Annotated[Principal, Depends(scoped("admin"))]
