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
from labelq.pipeline import FilesSink, SqlSink
from labelq.scoring import batches

BATCH = 1000


class SqlWriter:
    """Upserts result rows into `sink.table` (created if missing): the key, the label, its
    confidence, the probabilities (JSON), classifier version, calibration, run, time."""

    def __init__(self, sink: SqlSink, engine: Any):
        self.sink = sink
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    def _table(self, key_sample: Any) -> Any:
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
        key_type: Any = BigInteger() if isinstance(key_sample, int) else String(512)
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

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Upsert `rows` (dicts with the table's columns) in batches; returns how many."""
        from sqlalchemy import inspect

        written = 0
        table = None
        for batch in batches(rows, BATCH):
            if table is None:
                key = batch[0]["key"]
                table = self._table(int(key) if str(key).lstrip("-").isdigit() else key)
                if not inspect(self.engine).has_table(table.name, schema=table.schema):
                    table.create(self.engine, checkfirst=True)
                key_is_int = isinstance(table.c.key.type.python_type, type) and (
                    table.c.key.type.python_type is int
                )
            rows_out = [{**r, "key": int(r["key"]) if key_is_int else str(r["key"])} for r in batch]
            with self.engine.begin() as connection:
                self._upsert(connection, table, rows_out)
            written += len(batch)
        return written

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
