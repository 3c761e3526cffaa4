"""Where a pipeline's labels go, besides its job: a SQL table upserted by the source key, or
one file per run written atomically. Writing again after a failure duplicates nothing. The
engine and the folder are the operator's, resolved and bounded by `labelq.targets`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from labelq import formats
from labelq.errors import InputError
from labelq.pipeline import FilesSink, SqlSink
from labelq.scoring import batches

BATCH = 1000


def _is_integer(column_type: Any) -> bool:
    try:
        return column_type is not None and column_type.python_type is int
    except NotImplementedError:
        return False


class SqlWriter:
    """Upserts result rows into `sink.table` (created if missing): the key, the label, its
    confidence, the probabilities (JSON), classifier version, calibration, run, time."""

    def __init__(self, sink: SqlSink, engine: Any):
        self.sink = sink
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def _table(self, integer_keys: bool) -> Any:
        from sqlalchemy import (
            JSON,
            BigInteger,
            Column,
            DateTime,
            Float,
            Integer,
            MetaData,
            String,
            Table,
            Text,
        )

        schema, _, name = self.sink.table.rpartition(".")
        key_type: Any = BigInteger() if integer_keys else String(512)
        return Table(
            name,
            MetaData(schema=schema or None),
            Column("key", key_type, primary_key=True),
            Column("label", String(200)),
            Column("confidence", Float),
            Column("probs", JSON),
            Column("classifier_version", Integer),
            Column("calibration_id", BigInteger),
            Column("run_id", BigInteger),
            Column("scored_at", DateTime(timezone=True)),
            Column("error", Text),
        )

    def write(self, rows: Iterable[dict[str, Any]], *, integer_keys: bool = False) -> int:
        """Upsert `rows` (dicts with the table's columns) in one transaction: a run that fails
        midway leaves none of its writes visible. Keys keep their source's type: the table
        is made with an integer key only when the source's key column is one
        (`integer_keys`), otherwise text, so '007' and '7' are two rows; a table that exists
        decides by its own key column, and a key it cannot hold is an error naming it.
        Returns how many rows."""
        from sqlalchemy import inspect

        written = 0
        with self.engine.begin() as connection:
            table = self._table(integer_keys)
            found = inspect(connection)
            if found.has_table(table.name, schema=table.schema):
                columns = {
                    c["name"]: c["type"] for c in found.get_columns(table.name, table.schema)
                }
                integer_keys = _is_integer(columns.get("key"))
                table = self._table(integer_keys)
            else:
                table.create(connection)
            for batch in batches(rows, BATCH):
                out = [{**r, "key": self._key(r["key"], integer_keys)} for r in batch]
                self._upsert(connection, table, out)
                written += len(batch)
        return written

    def _key(self, key: Any, integer: bool) -> Any:
        if not integer:
            return str(key)
        text = str(key)
        if not text.lstrip("-").isdigit() or str(int(text)) != text:
            raise InputError(
                f"key {text!r} is not an integer, and the key column of sink table "
                f"{self.sink.table!r} is (write to a table with a text key)",
                field="sink.table",
            )
        return int(text)

    def _upsert(self, connection: Any, table: Any, rows: list[dict[str, Any]]) -> None:
        name = self.engine.dialect.name
        columns = [c.name for c in table.columns if c.name != "key"]
        if name in ("postgresql", "sqlite"):
            from sqlalchemy.dialects import postgresql, sqlite

            dialect_insert: Any = postgresql.insert if name == "postgresql" else sqlite.insert
            statement = dialect_insert(table)
            statement = statement.on_conflict_do_update(
                index_elements=["key"], set_={c: statement.excluded[c] for c in columns}
            )
            connection.execute(statement, rows)
            return
        # Elsewhere: delete and insert in one transaction (the caller's).
        connection.execute(table.delete().where(table.c.key.in_([r["key"] for r in rows])))
        connection.execute(table.insert(), rows)


class FilesWriter:
    """One file per run in a folder of an operator's root (made and checked by
    `labelq.targets.folder`): written to a temporary name of its own, then renamed."""

    def __init__(self, sink: FilesSink, folder: Path):
        self.sink = sink
        self.folder = folder

    def write(self, name: str, rows: Iterator[dict[str, Any]], labels: list[str]) -> Path:
        final = self.folder / f"{name}.{self.sink.format}"
        # A name of this attempt's own: two writers never share one partial file.
        partial = self.folder / f".{name}.{uuid.uuid4().hex[:12]}.partial"
        try:
            with formats.Writer(partial, self.sink.format, labels) as writer:
                for row in rows:
                    writer.write(row)
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final


def sink_row(result: dict[str, Any], run_id: int, version: int, scored_at: Any) -> dict[str, Any]:
    """A result row as the SQL sink stores it."""
    return {
        "key": result.get("custom_id"),
        "label": result.get("label"),
        "confidence": result.get("confidence"),
        "probs": result.get("probs"),
        "classifier_version": version,
        "calibration_id": (result.get("calibration") or {}).get("id"),
        "run_id": run_id,
        "scored_at": scored_at,
        "error": result.get("error"),
    }
