"""The databases and folders pipelines may use: the operator's, by name.

`LABELQ_PIPELINE_CONNECTIONS` maps a name to a database URL (`${VAR}` is read from the
service's environment there, and only there: that is where a deployment's secrets are), and
`LABELQ_PIPELINE_ROOTS` a name to a folder. Either may be bound to some tenants, and is
read-only unless the operator says `write`. A pipeline names them; it never holds a URL, an
absolute path, a `..` or a `${VAR}` of its own.

Every connection runs bounded: a connect timeout, a statement timeout and a lock timeout on
every statement, and a source's transaction read-only whatever its URL says. A folder is the
root's own: its path is resolved and must stay inside the root, and files are opened without
following a link.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelq.errors import InputError, LabelqError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class Connection(BaseModel):
    """An operator's database for pipelines: a URL, or `{"url", "tenants", "queries",
    "write"}`."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="SQLAlchemy URL (PostgreSQL or SQLite); ${VAR} allowed")
    tenants: list[str] | None = Field(None, description="only these tenants; None: every one")
    queries: bool = Field(False, description="sources may give a query, not only a table")
    write: bool = Field(False, description="sinks may write here (create and upsert a table)")

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


class Root(BaseModel):
    """An operator's folder for pipelines: a path, or `{"path", "tenants", "write"}`."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="a folder; ${VAR} allowed")
    tenants: list[str] | None = None
    write: bool = Field(False, description="sinks may write files here")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


def resolve_env(text: str, what: str) -> str:
    """`${NAME}` in an operator's setting replaced by the environment's value."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise LabelqError(f"{what}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(value, text)


@dataclass(frozen=True)
class Limits:
    """What every pipeline connection is held to (LABELQ_PIPELINE_*_TIMEOUT)."""

    connect_timeout: float
    statement_timeout: float
    lock_timeout: float


def _mine(
    named: dict[str, Any], name: str, tenant: str, kind: str, setting: str, field: str
) -> Any:
    """The operator's connection or root `name`, if `tenant` may use it: another tenant's is
    as one that does not exist (its name is not told)."""
    mine = {n: t for n, t in named.items() if t.tenants is None or tenant in t.tenants}
    if name not in mine:
        raise InputError(
            f"no {kind} named {name!r} ({setting}); yours: {sorted(mine)}", field=field
        )
    return mine[name]


def connection_url(
    connections: dict[str, Connection], name: str, tenant: str, *, field: str, write: bool
) -> tuple[str, Connection]:
    """The URL of the operator's connection `name` for `tenant`, and its settings."""
    found: Connection = _mine(
        connections, name, tenant, "connection", "LABELQ_PIPELINE_CONNECTIONS", field
    )
    if write and not found.write:
        raise InputError(f"connection {name!r} is read-only: no sink may write to it", field=field)
    return resolve_env(found.url, f"connection {name!r}"), found


def folder(
    roots: dict[str, Root], root: str, path: str, tenant: str, *, part: str, write: bool
) -> Path:
    """The folder `path` inside the operator's root `root`, resolved (links followed) and
    checked to stay inside it; created when a sink writes there. `part`: `source` or `sink`,
    for the fields errors name."""
    field = f"{part}.root"
    found: Root = _mine(roots, root, tenant, "root", "LABELQ_PIPELINE_ROOTS", field)
    if write and not found.write:
        raise InputError(f"root {root!r} is read-only: no sink may write to it", field=field)
    base = Path(resolve_env(found.path, f"root {root!r}")).resolve()
    if not base.is_dir():
        raise LabelqError(f"root {root!r} is not a folder on this host (LABELQ_PIPELINE_ROOTS)")
    target = (base / path).resolve() if path else base
    if not target.is_relative_to(base):
        raise InputError(f"{path!r} leaves root {root!r}", field=f"{part}.path")
    if write:
        _make_inside(base, target, root, f"{part}.path")
    if not target.is_dir():
        raise InputError(f"{path or '.'} is not a folder of root {root!r}", field=f"{part}.path")
    return target


def _make_inside(base: Path, target: Path, root: str, field: str) -> None:
    """Create `target`'s missing folders one by one, each checked to be a real folder inside
    `base` (never a link)."""
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)
        if current.is_symlink() or not current.is_dir():
            raise InputError(
                f"{current.relative_to(base)} is not a folder of root {root!r}", field=field
            )


def open_file(folder: Path, name: str) -> IO[bytes]:
    """A regular file of `folder`, opened without following a link (a link put in its place
    after it was listed is refused, not read)."""
    directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    finally:
        os.close(directory)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(f"{name} is not a regular file")
    return os.fdopen(fd, "rb")


def regular_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    """The regular files of `folder` (links and folders left out), by name."""
    with os.scandir(folder) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        if entry.is_file(follow_symlinks=False):
            yield entry


def engine(url: str, limits: Limits, *, read_only: bool) -> Any:
    """A SQLAlchemy engine on an operator's connection, held to `limits`: on PostgreSQL a
    connect timeout, and statement and lock timeouts set by the server for every statement, a
    read-only default (a source) that no URL option turns off, no autocommit; on SQLite a
    busy timeout, statements interrupted past the statement timeout, and `query_only`."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        statement, lock = int(limits.statement_timeout * 1000), int(limits.lock_timeout * 1000)
        options = (
            f"-c statement_timeout={statement} -c lock_timeout={lock} "
            f"-c idle_in_transaction_session_timeout={statement}"
        )
        if read_only:
            options += " -c default_transaction_read_only=on"
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {
            "connect_timeout": max(1, round(limits.connect_timeout)),
            "options": options,  # replaces any `options` of the URL
            "autocommit": False,
        }
        return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    if backend == "sqlite":
        made = create_engine(parsed, connect_args={"timeout": limits.lock_timeout})
        deadline = [float("inf")]

        @event.listens_for(made, "connect")
        def _bounded(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.set_progress_handler(lambda: time.monotonic() > deadline[0], 10_000)
            if read_only:
                dbapi_conn.execute("PRAGMA query_only = ON")

        @event.listens_for(made, "before_cursor_execute")
        def _start(*_: Any) -> None:
            deadline[0] = time.monotonic() + limits.statement_timeout

        return made
    raise LabelqError(f"pipeline connections are PostgreSQL or SQLite, not {backend}")


def same_database(a: str, b: str) -> bool:
    """Whether two URLs reach one database (labelq's own is never a pipeline connection)."""
    from sqlalchemy.engine import make_url

    try:
        x, y = make_url(a), make_url(b)
    except Exception:
        return False
    if x.get_backend_name() != y.get_backend_name():
        return False
    if x.get_backend_name() == "sqlite":
        files = [u.database for u in (x, y)]
        if not all(files) or ":memory:" in files:
            return False
        return bool(Path(str(files[0])).resolve() == Path(str(files[1])).resolve())
    loopback = {None, "", "localhost", "127.0.0.1", "::1"}

    def host(u: Any) -> str | None:
        return "loopback" if u.host in loopback else u.host

    return (host(x), x.port or 5432, x.database) == (host(y), y.port or 5432, y.database)
