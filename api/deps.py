"""Per-request dependencies: who is asking, and the one way from a route to a use case.

A route parses, makes one call and shapes the answer:

    @router.post("/{job_id}/cancel", response_model=JobStatus)
    async def cancel_job(job_id: str, call: Submitting) -> JobStatus:
        return await call(jobs.cancel, job_id)

`call(use_case, ...)` runs `use_case(ctx, ...)` on a worker thread with the caller's context
(`service.context.Ctx`: the process's services and the key's tenant); `call.on_loop(...)` runs
a use case that only reads on the event loop (PostgreSQL), where writing raises.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Concatenate, ParamSpec, TypeVar

from cachetools import TTLCache
from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool

from api.errors import Forbidden, Unauthorized
from api.metrics import Metrics
from labelq.errors import RateLimited
from labelq.settings import Settings
from service import keys
from service.context import Ctx, LoopReads, Services
from service.keys import Principal

P = ParamSpec("P")
T = TypeVar("T")


class RateLimiter:
    """At most `per_minute` events per identity in any 60 s (a sliding window, per API
    process), for at most `identities` identities at once (the least recently seen are
    forgotten first): the table is bounded whoever asks."""

    def __init__(self, per_minute: int, identities: int = 100_000):
        self.per_minute = per_minute
        self._seen: TTLCache[str, deque[float]] = TTLCache(identities, 60)
        self._lock = threading.Lock()

    def take(self, who: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            window = self._seen.get(who)
            if window is None:
                window = self._seen[who] = deque()
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
    services: Services
    metrics: Metrics
    submissions: RateLimiter
    # Set while the app runs on PostgreSQL (see `api.app.lifespan`): reads on the loop.
    loop: LoopReads | None = field(default=None)

    @property
    def settings(self) -> Settings:
        return self.services.settings


class Call:
    """Runs use cases for one caller: `await call(use_case, *args)` is `use_case(ctx, *args)`
    on a worker thread, with sessions of its own closed before the answer goes back.

    Why not a session held for the whole request (a `yield` dependency, as the FastAPI template
    does): with sync routes FastAPI serializes the answer on a threadpool thread while the
    request's session still holds its connection, so under load every thread waits for a
    connection and every connection waits for a thread. Measured with 200 clients polling job
    status: no answer at all within 30 s that way, 373 in 4 s this way."""

    def __init__(self, st: AppState, ctx: Ctx, who: Principal = keys.LOCAL):
        self.ctx, self.who = ctx, who
        self._loop = st.loop

    @classmethod
    def system(cls, st: AppState) -> Call:
        """The service's own calls: authentication, probes and scrapes (every tenant's)."""
        return cls(st, Ctx.system(st.services))

    async def __call__(
        self, fn: Callable[Concatenate[Ctx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await run_in_threadpool(fn, self.ctx, *args, **kwargs)

    async def on_loop(
        self, fn: Callable[Concatenate[Ctx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """A use case that only reads, on the event loop where the app has one (PostgreSQL;
        elsewhere on a thread, as `call`). Its I/O must go through `ctx.reads()` alone."""
        if self._loop is None:
            return await self(fn, *args, **kwargs)
        return await self._loop.run(self.ctx, fn, *args, **kwargs)


# Dependencies that do not block are `async def`: FastAPI runs a plain `def` dependency on a
# threadpool thread, a hop that costs more than the work in these.
async def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.labelq
    return app_state


StateDep = Annotated[AppState, Depends(state)]


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_name(host_header: str) -> bool:
    """Whether a Host header names this machine's loopback (a browser led here by DNS
    rebinding, or a reverse proxy, sends another name)."""
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return _is_loopback(host)


def _bearer(request: Request) -> str | None:
    """The token of `Authorization: Bearer <token>` (the scheme in any case, any spaces)."""
    scheme, _, token = request.headers.get("authorization", "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


async def principal(request: Request, st: StateDep) -> Principal:
    """Who is asking: `Authorization: Bearer <key>` names a tenant and scopes. No key, no
    service; unless the operator runs it open (`labelq serve --no-auth`), and then only for
    clients on loopback whose Host header names loopback too (the embedded default on a
    laptop). Revoking every key never opens it.

    The key is looked up on the event loop (a read of its own, closed before the route runs:
    a connection held through the whole request while the route takes another is how a pool
    runs dry under load); its use is recorded on a thread at most once a minute."""
    bearer = _bearer(request)
    if bearer is None:
        client = request.client.host if request.client else None
        if st.settings.no_auth and _is_loopback(client):
            if _loopback_name(request.headers.get("host", "")):
                return keys.LOCAL
            raise Unauthorized(
                "served without keys to loopback names only: this Host header names another",
                field="Host",
            )
        raise Unauthorized(
            "missing `Authorization: Bearer <key>` header (an operator makes keys with "
            "`labelq keys create`)",
            field="Authorization",
        )
    trusted = st.services.trusted_keys
    found = trusted.get(bearer)
    if found is None:
        system = Call.system(st)
        checked = await system.on_loop(keys.authenticate, bearer)
        if checked is not None:
            found = checked.principal
            if checked.stale_use and found.key_id is not None:
                await system(keys.mark_used, found.key_id)
            trusted.put(bearer, found)
    if found is None:
        raise Unauthorized("unknown or revoked API key", field="Authorization")
    return found


async def submission_quota(
    request: Request, st: StateDep, who: Principal = Depends(principal)
) -> None:
    """Counts a submission against its key's rate (served without keys: its client's)."""
    client = request.client.host if request.client else "unknown"
    st.submissions.take(f"key:{who.key_id}" if who.key_id is not None else f"client:{client}")


def call_as(scope: str) -> Callable[..., Awaitable[Call]]:
    """A dependency: the `Call` of a caller whose key holds `scope` (403 otherwise)."""

    async def check(st: StateDep, who: Principal = Depends(principal)) -> Call:
        if not who.can(scope):
            raise Forbidden(f"this key lacks the {scope!r} scope", field="Authorization")
        return Call(st, Ctx.of(st.services, who.tenant), who)

    return check


async def system_call(st: StateDep) -> Call:
    """The service's own figures for probes and scrapes (`/readyz`, `/metrics`): every
    tenant's, asked by no key."""
    return Call.system(st)


# Row ids and versions in paths: 64-bit, as the database stores them.
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]

Reading = Annotated[Call, Depends(call_as("read"))]
Submitting = Annotated[Call, Depends(call_as("submit"))]
Calibrating = Annotated[Call, Depends(call_as("calibrate"))]
Piping = Annotated[Call, Depends(call_as("pipelines"))]
Scraping = Annotated[Call, Depends(call_as("metrics"))]
Administering = Annotated[Call, Depends(call_as("admin"))]
Monitoring = Annotated[Call, Depends(system_call)]
