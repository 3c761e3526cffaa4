"""Where a pipeline's rows come from: a SQL table or read-only query read past a watermark in
pages, or new files in a folder. Both give `(custom_id, fields)` records in a stable order."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from labelq import formats
from labelq.errors import InputError, SpecError
from labelq.pipeline import FilesSource, SqlSource, resolve_env

Record = tuple[str, dict[str, Any]] | InputError


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


class SqlReader:
    """Reads `source` in pages ordered by (watermark, key), after a committed position."""

    def __init__(self, source: SqlSource):
        from sqlalchemy import create_engine

        self.source = source
        self.url = resolve_env(source.url, "source.url")
        try:
            self.engine = create_engine(self.url)
        except Exception as exc:
            raise SpecError(f"cannot use source url: {exc}", field="source.url") from None
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

        try:
            with self.engine.connect() as connection:
                self._read_only(connection)
                columns = set(
                    connection.execute(text(f"SELECT * FROM {self._base()} LIMIT 0")).keys()
                )
        except Exception as exc:
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

    def pages(self, after: dict[str, Any] | None) -> Iterator[tuple[list[Record], dict[str, Any]]]:
        """Pages of records past `after` (a position from an earlier page), each with the
        position after its last row."""
        from sqlalchemy import text

        s = self.source
        key, order = self._q(s.key), self._q(self.order)
        columns = {self._q(c) for c in (s.key, self.order, *s.fields.values())}
        position = None if after is None else (load_value(after["order"]), load_value(after["key"]))
        with self.engine.connect() as connection:
            self._read_only(connection)
            while True:
                where, params = "", {"limit": s.page_size}
                if position is not None:
                    where = f"WHERE {order} > :o OR ({order} = :o AND {key} > :k)"
                    params |= {"o": position[0], "k": position[1]}
                if self.order == s.key:
                    order_by = key
                    if position is not None:
                        where = f"WHERE {key} > :k"
                else:
                    order_by = f"{order}, {key}"
                sql = (
                    f"SELECT {', '.join(sorted(columns))} FROM {self._base()} {where} "
                    f"ORDER BY {order_by} LIMIT :limit"
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
    """New files in a folder: each processed once (by path and content hash); a file modified
    in the last `settle_seconds` is still being written and waits for the next run."""

    def __init__(self, source: FilesSource):
        self.source = source
        self.folder = Path(resolve_env(source.path, "source.path"))

    def check(self) -> None:
        if not self.folder.is_dir():
            raise SpecError(f"{self.folder} is not a folder", field="source.path")

    def pending(self, done: set[tuple[str, str]], now: float | None = None) -> list[SourceFile]:
        now = time.time() if now is None else now
        out = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or not fnmatch.fnmatch(path.name, self.source.glob):
                continue
            stat = path.stat()
            if now - stat.st_mtime < self.source.settle_seconds:
                continue  # still being written
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if (str(path), digest) not in done:
                out.append(SourceFile(str(path), stat.st_size, digest))
        return out

    def records(self, files: list[SourceFile]) -> Iterator[Record]:
        mapping = dict(self.source.fields)
        for file in files:
            fmt = formats.detect(file.path, self.source.format)
            name = Path(file.path).name
            for record in formats.read(file.path, fmt, mapping):
                if isinstance(record, InputError):
                    yield InputError(f"{name}: {record.message}", line=record.line)
                    continue
                number, fields = record
                key = fields.pop(self.source.key, None) if self.source.key else None
                yield (str(key) if key is not None else f"{name}:{number}", fields)
