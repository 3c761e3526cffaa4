"""The one way into a use case: `use_case(ctx, ...)`.

`Services` is what one process holds (settings, session makers, the dispatcher, caches), built
once by `service.wiring`. A `Ctx` is one call: those services and whose data it acts on, the
caller's tenant, or every tenant for the system (the worker, the reconciler, the CLI), which
must be asked for by name (`Ctx.system`). Use cases open their own sessions through the context
(`ctx.tx()` for a transaction, `ctx.reads()` for reads) and pass `tenant=ctx.tenant` to the data
functions of `db/`; they never receive a session or a tenant.

On PostgreSQL an API process runs the poll reads and authentication on its event loop
(`LoopReads.run`): the same sync use case, its one read session bound to the context. There
`ctx.tx()` raises, and the session itself refuses to write (`db.session.ReadOnlySession`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from db.schema import Features
from db.session import ReadOnlyTransaction, connection_lost
from labelq.errors import LabelqError
from labelq.settings import Settings
from service.dispatch import Dispatcher

if TYPE_CHECKING:
    from service.keys import TrustedKeys
    from service.workers import LiveQueues

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Services:
    """What one process holds, built once by `service.wiring` and passed to every use case
    through its `Ctx`."""

    settings: Settings
    sessions: sessionmaker[Session]  # transactions
    reads: sessionmaker[Session]  # autocommit reads, refusing to write; the same pool
    dispatcher: Dispatcher
    live_queues: LiveQueues
    trusted_keys: TrustedKeys
    # What of the revisions newer than this code's oldest schema the database has
    features: Features = field(default_factory=Features)


class NoTenant(LabelqError):
    """A use case that acts for one tenant was called with the system context."""


@dataclass(frozen=True)
class Ctx:
    """One call of a use case: the process's services and whose data it acts on."""

    services: Services
    # The caller's tenant; None only through `Ctx.system`: every tenant's data.
    tenant: str | None
    # On the event loop: the one read session the call runs in (see `LoopReads.run`).
    bound: Session | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, services: Services, tenant: str) -> Ctx:
        """A call on behalf of `tenant` (a key's tenant, or the tenant a task acts for)."""
        if not tenant:
            raise ValueError("a tenant's context needs the tenant")
        return cls(services, tenant)

    @classmethod
    def system(cls, services: Services) -> Ctx:
        """A call by labelq itself (worker, reconciler, scheduler, operator CLI): every
        tenant's data."""
        return cls(services, None)

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def dispatcher(self) -> Dispatcher:
        return self.services.dispatcher

    @property
    def owner(self) -> str:
        """The tenant this call acts for; `NoTenant` in the system context (a use case that
        makes or names a tenant's things needs one)."""
        if self.tenant is None:
            raise NoTenant("this acts for one tenant: the system context names none")
        return self.tenant

    def acting_for(self, tenant: str) -> Ctx:
        """The system acting for one tenant (a pipeline run submits its tenant's job)."""
        return replace(self, tenant=tenant)

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises."""
        if self.bound is not None:
            raise ReadOnlyTransaction(
                "a use case run on the event loop only reads: call it on a thread to write"
            )
        with self.services.sessions() as s, s.begin():
            yield s

    @contextmanager
    def reads(self) -> Iterator[Session]:
        """A session that reads (autocommit: each statement its own snapshot) and cannot
        write; on the event loop, the call's own."""
        if self.bound is not None:
            yield self.bound
            return
        with self.services.reads() as s:
            yield s

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """One transaction that only reads, for reads that must agree with each other (or
        set per-transaction options); rolled back at the end."""
        if self.bound is not None:
            raise ReadOnlyTransaction("a snapshot needs a transaction: call this on a thread")
        with self.services.sessions() as s:
            yield s

    def pages(
        self,
        fetch: Callable[[Session, T, int], Sequence[R]],
        after: T,
        key: Callable[[R], T],
        size: int = 1000,
    ) -> Iterator[R]:
        """Every row `fetch(session, after, size)` pages through, one short read session a
        page: a 1M-row export holds neither a transaction nor its rows for its duration."""
        while True:
            with self.reads() as s:
                page = fetch(s, after, size)
            yield from page
            if len(page) < size:
                return
            after = key(page[-1])


@dataclass
class LoopReads:
    """Read sessions on an API process's event loop (PostgreSQL through asyncpg), at most
    `gate`'s count at once: as many as the pool's connections, so no request waits in the pool
    itself. asyncio's pool queue is not fair (a request returning a connection can take it back
    before a woken waiter runs, and the waiter queues again at the back): with 200 clients on
    16 connections a few waited 4 s while the median took 50 ms. The semaphore hands out turns
    in arrival order.

    Why on the loop: a thread hop per request, and the GIL passed between the loop and up to
    16 threads, was the API's largest cost under many pollers. Measured with bench/load.py (200
    clients polling a job's status and a page of its results every 0.5 s, one process on
    PostgreSQL, 20 s runs): 432-439 answers a second, p99 427-460 ms, through threads; 581,
    p99 264 ms, this way."""

    sessions: async_sessionmaker[AsyncSession]
    gate: asyncio.Semaphore

    async def run(
        self, ctx: Ctx, fn: Callable[Concatenate[Ctx, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn(ctx, ...)` in a greenlet of `AsyncSession.run_sync`: its queries go out through
        asyncpg and are awaited, so other requests go on meanwhile. A read whose connection
        the server closed (a restart) runs once more on a new one: the loop engine has no
        pre-ping, and the failed statement invalidated the pool."""

        def bound(s: Session) -> T:
            return fn(Ctx(ctx.services, ctx.tenant, s), *args, **kwargs)

        async with self.gate:
            try:
                async with self.sessions() as s:
                    return await s.run_sync(bound)
            except DBAPIError as exc:
                if not connection_lost(exc):
                    raise
            async with self.sessions() as s:
                return await s.run_sync(bound)
