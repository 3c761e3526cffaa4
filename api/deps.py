"""Per-request dependencies: the app's state, a database session, and authentication."""

from __future__ import annotations

import asyncio
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
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from api.errors import Forbidden, Unauthorized
from api.metrics import Metrics
from db.keys import hash_key
from db.session import connection_lost, read_sessions
from labelq.errors import RateLimited
from labelq.settings import Settings
from service import keys
from service.dispatch import Dispatcher
from service.keys import Principal
from service.workers import LiveQueues


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


class TrustedKeys:
    """Keys this API process checked in the last `ttl` seconds, by their hash: a poller's
    every request need not look its key up again. Revoking a key through this process forgets
    it at once; a key revoked through another process is refused here within `ttl`
    (LABELQ_KEY_CACHE_SECONDS; 0 keeps nothing). Only live keys are kept: a wrong or revoked
    key is looked up every time."""

    def __init__(
        self, ttl: float, maxsize: int = 10_000, timer: Callable[[], float] = time.monotonic
    ):
        self.ttl = ttl
        self._keys: TTLCache[str, Principal] = TTLCache(maxsize, ttl or 1, timer)
        self._lock = threading.Lock()

    def get(self, token: str) -> Principal | None:
        if not self.ttl:
            return None
        with self._lock:
            return self._keys.get(hash_key(token))

    def put(self, token: str, who: Principal) -> None:
        if self.ttl and who.key_id is not None:
            with self._lock:
                self._keys[hash_key(token)] = who

    def forget(self, key_id: int) -> None:
        with self._lock:
            for digest, who in list(self._keys.items()):
                if who.key_id == key_id:
                    del self._keys[digest]


P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class AppState:
    settings: Settings
    factory: sessionmaker[Session]
    dispatcher: Dispatcher
    metrics: Metrics
    submissions: RateLimiter = field(default_factory=lambda: RateLimiter(120))
    reads: sessionmaker[Session] = field(init=False)
    # Set while the app runs on PostgreSQL (see `api.app.lifespan`): read sessions on the loop.
    loop_reads: LoopReads | None = field(default=None, init=False)
    trusted: TrustedKeys = field(init=False)
    live_queues: LiveQueues = field(init=False)

    def __post_init__(self) -> None:
        self.reads = read_sessions(self.factory)
        self.trusted = TrustedKeys(self.settings.key_cache_seconds)
        self.live_queues = LiveQueues(self.settings.worker_stale_after)


# Dependencies that do not block are `async def`: FastAPI runs a plain `def` dependency on a
# threadpool thread, a hop that costs more than the work in these.
async def state(request: Request) -> AppState:
    app_state: AppState = request.app.state.labelq
    return app_state


StateDep = Annotated[AppState, Depends(state)]


class Db:
    """Runs a use case on a worker thread with a session of its own, closed before the answer
    goes back: `await db(service_function, *args)` calls `service_function(session, *args)`.

    Why not a session held for the whole request (a `yield` dependency, as the FastAPI template
    does): with sync routes FastAPI serializes the answer on a threadpool thread while the
    request's session still holds its connection, so under load every thread waits for a
    connection and every connection waits for a thread. Measured with 200 clients polling job
    status: no answer at all within 30 s that way, 373 in 4 s this way."""

    def __init__(self, factory: sessionmaker[Session]):
        self.factory = factory

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        def run() -> T:
            with self.factory() as s:
                return fn(s, *args, **kwargs)

        return await run_in_threadpool(run)


async def db(st: StateDep) -> Db:
    return Db(st.factory)


DbDep = Annotated[Db, Depends(db)]


@dataclass
class LoopReads:
    """Read sessions on the event loop, at most `gate`'s count at once: as many as the pool's
    connections, so no request waits in the pool itself. asyncio's pool queue is not fair (a
    request returning a connection can take it back before a woken waiter runs, and the waiter
    queues again at the back): with 200 clients on 16 connections a few waited 4 s while the
    median took 50 ms. The semaphore hands out turns in arrival order."""

    sessions: async_sessionmaker[AsyncSession]
    gate: asyncio.Semaphore


class Reads(Db):
    """As `Db`, with a read-only (autocommit) session, for routes that only read; on
    PostgreSQL, once the app has started, the use case runs on the event loop itself:
    `AsyncSession.run_sync` runs the same sync code in a greenlet whose queries go out through
    asyncpg and are awaited, so other requests go on meanwhile. So a use case called this way
    must do its I/O through its session alone (none through a `sessionmaker` it is handed):
    use `.blocking` for those.

    Why: a thread hop per request, and the GIL passed between the loop and up to 16 threads,
    was the API's largest cost under many pollers. Measured with bench/load.py (200 clients
    polling a job's status and a page of its results every 0.5 s, one process on PostgreSQL,
    20 s runs): 432-439 answers a second, p99 427-460 ms, through threads; 581, p99 264 ms,
    this way."""

    def __init__(self, factory: sessionmaker[Session], loop: LoopReads | None):
        super().__init__(factory)
        self.loop = loop

    @property
    def blocking(self) -> Db:
        return Db(self.factory)

    async def __call__(
        self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self.loop is None:
            return await super().__call__(fn, *args, **kwargs)
        async with self.loop.gate:
            try:
                async with self.loop.sessions() as s:
                    return await s.run_sync(fn, *args, **kwargs)
            except DBAPIError as exc:
                if not connection_lost(exc):
                    raise
            # The server closed the connection (a restart): the pool was invalidated, so this
            # read runs once more on a new one (the loop engine has no pre-ping).
            async with self.loop.sessions() as s:
                return await s.run_sync(fn, *args, **kwargs)


async def reads(st: StateDep) -> Reads:
    return Reads(st.reads, st.loop_reads)


ReadsDep = Annotated[Reads, Depends(reads)]


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def submission_quota(request: Request, st: StateDep) -> None:
    """Counts a submission against its API key's (or, with no keys, its client's) rate."""
    token = request.headers.get("authorization", "")
    who = hash_key(token) if token else (request.client.host if request.client else "unknown")
    st.submissions.take(who)


async def principal(request: Request, st: StateDep) -> Principal:
    """Who is asking: `Authorization: Bearer <key>` names a tenant and scopes. With no keys
    stored the service is open, but only to clients on loopback (the embedded default).

    Its own short read session on a threadpool thread, closed before the route runs: a
    connection held through the whole request while the route takes another is how a pool runs
    dry under load (measured: every request of 200 concurrent clients timed out)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    found = st.trusted.get(bearer) if bearer else None
    if found is None:
        found = await Reads(st.reads, st.loop_reads)(keys.authenticate, bearer)
        if found is not None and bearer:
            st.trusted.put(bearer, found)
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


def scoped(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(who: Principal = Depends(principal)) -> Principal:
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
