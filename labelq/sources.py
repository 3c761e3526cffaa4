"""Where a pipeline's rows come from: a SQL table or read-only query read past a watermark in
pages, or new files in a folder. Both give `(custom_id, fields)` records in a stable order.
The engine and the folder are the operator's, resolved and bounded by `labelq.targets`."""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from labelq import formats
from labelq.errors import InputError, SpecError
from labelq.pipeline import FilesSource, SqlSource
from labelq.targets import open_file, regular_files

Record = tuple[str, dict[str, Any]] | InputError
log = logging.getLogger(__name__)


# -- watermarks: JSON with the value's type, so a timestamp comes back a timestamp -----------
def dump_value(value: Any) -> dict[str, Any]:
    if isinstance(value, datetime):
        return {"type": "datetime", "value": value.isoformat()}
    if isinstance(value, date):
        return {"type": "date", "value": value.isoformat()}
    if isinstance(value, bool | int | float | str) or value is None:
        return {"type": type(value).__name__, "value": value}
    return {"type": "str", "value": str(value)}


def load_value(data: dict[str, Any]) -> Any:
    kind, value = data["type"], data["value"]
    if kind == "datetime":
        return datetime.fromisoformat(value)
    if kind == "date":
        return date.fromisoformat(value)
    return value


DEFAULT_LAG = 120.0  # seconds a time watermark's newest rows wait before a run reads them
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}.*)?$")


def behind(value: Any, overlap: float | None) -> Any:
    """The start of the overlap window behind a watermark `value`: `overlap` (default 1000)
    less for a number, `overlap` seconds (default 600) earlier for a time; None when there
    is none (off, or a text watermark)."""
    if overlap == 0 or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value - (1000 if overlap is None else overlap)
    if isinstance(value, datetime):
        return value - timedelta(seconds=600 if overlap is None else overlap)
    if isinstance(value, date):
        return value - timedelta(days=max(1, round((600 if overlap is None else overlap) / 86400)))
    return None


class SqlReader:
    """Reads `source` in pages ordered by (watermark, key), after a committed position, on an
    engine `labelq.targets.engine` made (read-only, bounded)."""

    def __init__(self, source: SqlSource, engine: Any):
        self.source = source
        self.engine = engine
        self.order = source.watermark or source.key
        self._q = self.engine.dialect.identifier_preparer.quote

    def close(self) -> None:
        self.engine.dispose()

    def _base(self) -> str:
        if self.source.table:
            return ".".join(self._q(part) for part in self.source.table.split("."))
        return f"({self.source.query}) AS labelq_src"

    def _read_only(self, connection: Any) -> None:
        name = self.engine.dialect.name
        if name == "postgresql":
            connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif name == "sqlite":
            connection.exec_driver_sql("PRAGMA query_only = ON")

    def check(self) -> None:
        """The source answers and has the columns the pipeline names (each a SpecError)."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            connection = self.engine.connect()
        except Exception as exc:
            # The server's words name the operator's hosts and roles: not the tenant's to read.
            log.warning("pipeline source %s: %s", self.source.connection, _first_line(exc))
            raise SpecError(
                f"cannot reach connection {self.source.connection!r} (the service log says why)",
                field="source.connection",
            ) from None
        try:
            with connection:
                self._read_only(connection)
                columns = set(
                    connection.execute(text(f"SELECT * FROM {self._base()} LIMIT 0")).keys()
                )
        except (DBAPIError, OperationalError) as exc:
            where = "source.table" if self.source.table else "source.query"
            raise SpecError(f"cannot read the source: {_first_line(exc)}", field=where) from None
        wanted = {"source.key": self.source.key}
        if self.source.watermark:
            wanted["source.watermark"] = self.source.watermark
        wanted |= {f"source.fields.{f}": column for f, column in self.source.fields.items()}
        for field, column in wanted.items():
            if column not in columns:
                raise SpecError(
                    f"the source has no column {column!r}; it has {sorted(columns)}", field=field
                )
        if self.source.consistency == "snapshot":
            self._check_snapshot()

    def _check_snapshot(self) -> None:
        """`snapshot` needs PostgreSQL and a watermark column of transaction ids (xid8)."""
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        if self.engine.dialect.name != "postgresql":
            raise SpecError(
                "consistency `snapshot` reads by transaction visibility: a PostgreSQL source "
                f"only (this one is {self.engine.dialect.name}); use `overlap`",
                field="source.consistency",
            )
        below, _ = self.horizon(None)
        try:
            with self.engine.connect() as connection:
                self._read_only(connection)
                connection.execute(text(f"SELECT 1 FROM {self._base()} WHERE {below} LIMIT 0"))
        except DBAPIError:
            raise SpecError(
                f"consistency `snapshot` needs column {self.source.watermark!r} to be an xid8 "
                "set by its writer: `xid8 NOT NULL DEFAULT pg_current_xact_id()` (and a trigger "
                "that sets it on update)",
                field="source.watermark",
            ) from None

    def _column_type(self, column: str) -> Any:
        """A table column's declared SQLAlchemy type; None for a query's or one not found."""
        if not self.source.table:
            return None
        from sqlalchemy import inspect
        from sqlalchemy.exc import SAWarning

        schema, _, name = self.source.table.rpartition(".")
        with warnings.catch_warnings():  # a type SQLAlchemy does not know (xid8) is no match
            warnings.simplefilter("ignore", SAWarning)
            columns = inspect(self.engine).get_columns(name, schema or None)
        return next((found["type"] for found in columns if found["name"] == column), None)

    def _time_watermark(self, connection: Any) -> bool:
        """Whether the watermark holds times: by the table column's declared type, else by a
        value (SQLite hands times back as ISO text)."""
        from sqlalchemy import text

        if not self.source.watermark:
            return False
        declared = self._column_type(self.order)
        try:
            if declared is not None and declared.python_type in (datetime, date):
                return True
        except NotImplementedError:
            pass
        order = self._q(self.order)
        value = connection.execute(
            text(f"SELECT {order} FROM {self._base()} WHERE {order} IS NOT NULL LIMIT 1")
        ).scalar()
        if isinstance(value, str):
            return bool(ISO_TIME.match(value))
        return isinstance(value, date)

    def horizon(self, connection: Any) -> tuple[str, dict[str, Any]]:
        """The condition that keeps a run below its safety horizon, with its parameters ("" when
        there is none). `snapshot`: rows whose writing transaction ended before the statement's
        snapshot (every transaction below its xmin has ended: none can commit a lower value
        later). A time watermark: rows `lag` seconds old by the source's own clock."""
        s, order = self.source, self._q(self.order)
        if s.consistency == "snapshot":
            return f"{order} < pg_snapshot_xmin(pg_current_snapshot())", {}
        lag = DEFAULT_LAG if s.lag is None else s.lag
        if not lag or not self._time_watermark(connection):
            return "", {}
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            return f"{order} <= CURRENT_TIMESTAMP - make_interval(secs => :lag)", {"lag": lag}
        if dialect == "sqlite":  # times as text, read as UTC (what SQLite's own clock gives)
            return f"datetime({order}) <= datetime('now', :lag)", {"lag": f"-{lag} seconds"}
        now = datetime.now(UTC).replace(tzinfo=None)  # another database: labelq's clock, UTC
        return f"{order} <= :horizon", {"horizon": now - timedelta(seconds=lag)}

    def integer_keys(self) -> bool:
        """Whether the source's key column holds integers (a table's, by its declared type;
        a query's keys count as text), so a sink stores keys as the source has them."""
        declared = self._column_type(self.source.key)
        try:
            return declared is not None and bool(declared.python_type is int)
        except NotImplementedError:
            return False

    def by_keys(self, keys: list[str]) -> Iterator[list[Record]]:
        """The rows of `keys` (read again: the engine failed on them), in pages; a key gone
        from the source is not there."""
        from sqlalchemy import bindparam, text

        s = self.source
        columns = {self._q(c) for c in (s.key, self.order, *s.fields.values())}
        integer = self.integer_keys()
        sql = text(
            f"SELECT {', '.join(sorted(columns))} FROM {self._base()} "
            f"WHERE {self._q(s.key)} IN :keys"
        ).bindparams(bindparam("keys", expanding=True))
        with self.engine.connect() as connection:
            self._read_only(connection)
            for start in range(0, len(keys), s.page_size):
                part: list[Any] = keys[start : start + s.page_size]
                if integer:
                    part = [int(k) for k in part if k.lstrip("-").isdigit()]
                rows = connection.execute(sql, {"keys": part}).mappings().all()
                yield [(str(row[s.key]), {f: row[c] for f, c in s.fields.items()}) for row in rows]

    def _no_nulls(self, connection: Any) -> None:
        """A NULL in the watermark or key column is a row no position ever passes (PostgreSQL
        sorts it last, so a stored watermark would become NULL and every later run read 0
        rows): the run fails, naming the column and how many rows."""
        from sqlalchemy import text

        for field, column in (("source.watermark", self.order), ("source.key", self.source.key)):
            if field == "source.watermark" and not self.source.watermark:
                continue
            nulls = connection.execute(
                text(f"SELECT COUNT(*) FROM {self._base()} WHERE {self._q(column)} IS NULL")
            ).scalar_one()
            if nulls:
                raise InputError(
                    f"{nulls} source row(s) have NULL in column {column!r}: a watermark and a "
                    "key must be set on every row (fill them, or filter them out with a query)",
                    field=field,
                )

    def pages(self, after: dict[str, Any] | None) -> Iterator[tuple[list[Record], dict[str, Any]]]:
        """Pages of records past `after` (a position from an earlier page), each with the
        position after its last row."""
        from sqlalchemy import text

        s = self.source
        key, order = self._q(s.key), self._q(self.order)
        columns = {self._q(c) for c in (s.key, self.order, *s.fields.values())}
        position = None if after is None else (load_value(after["order"]), load_value(after["key"]))
        exact = s.consistency == "snapshot"
        back = None if position is None or exact else behind(position[0], s.overlap)
        with self.engine.connect() as connection:
            self._read_only(connection)
            self._no_nulls(connection)
            below, params = self.horizon(connection)
            params["limit"] = s.page_size
            while True:
                past = ""
                order_by = key if self.order == s.key else f"{order}, {key}"
                if back is not None:  # the first page: the overlap window, then on from it
                    past, params["o"] = f"{order} > :o", back
                    back = None
                elif position is not None and self.order == s.key:
                    past, params["k"] = f"{key} > :k", position[0]
                elif position is not None and position[1] is None:  # set by hand, no key
                    past, params["o"] = f"{order} > :o", position[0]
                elif position is not None:
                    past = f"({order} > :o OR ({order} = :o AND {key} > :k))"
                    params |= {"o": position[0], "k": position[1]}
                where = " AND ".join(c for c in (past, below) if c)
                sql = (
                    f"SELECT {', '.join(sorted(columns))} FROM {self._base()} "
                    f"{'WHERE ' + where if where else ''} ORDER BY {order_by} LIMIT :limit"
                )
                rows = connection.execute(text(sql), params).mappings().all()
                if not rows:
                    return
                records: list[Record] = [
                    (str(row[s.key]), {f: row[c] for f, c in s.fields.items()}) for row in rows
                ]
                last = rows[-1]
                position = (last[self.order], last[s.key])
                yield records, {"order": dump_value(position[0]), "key": dump_value(position[1])}
                if len(rows) < s.page_size:
                    return


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    sha256: str


class FilesReader:
    """New files in a folder of an operator's root: each processed once (by path and content
    hash); a file modified in the last `settle_seconds` is still being written and waits for
    the next run. Links are never followed: a link in the folder is not a file of it."""

    def __init__(self, source: FilesSource, folder: Path):
        self.source = source
        self.folder = folder

    def pending(self, done: set[tuple[str, str]], now: float | None = None) -> list[SourceFile]:
        """Files to read, named by their path inside the root (`source.path`/name)."""
        now = time.time() if now is None else now
        out = []
        for entry in regular_files(self.folder):
            if not fnmatch.fnmatch(entry.name, self.source.glob):
                continue
            stat = entry.stat(follow_symlinks=False)
            if now - stat.st_mtime < self.source.settle_seconds:
                continue  # still being written
            digest = hashlib.sha256()
            with open_file(self.folder, entry.name) as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            shown = f"{self.source.path}/{entry.name}" if self.source.path else entry.name
            if (shown, digest.hexdigest()) not in done:
                out.append(SourceFile(shown, stat.st_size, digest.hexdigest()))
        return out

    def records(self, files: list[SourceFile]) -> Iterator[Record]:
        mapping = dict(self.source.fields)
        for file in files:
            name = Path(file.path).name
            fmt = formats.detect(name, self.source.format)
            with open_file(self.folder, name) as stream:
                for record in formats.read_stream(stream, fmt, name, mapping):
                    if isinstance(record, InputError):
                        yield InputError(f"{name}: {record.message}", line=record.line)
                        continue
                    number, fields = record
                    key = fields.pop(self.source.key, None) if self.source.key else None
                    yield (str(key) if key is not None else f"{name}:{number}", fields)
