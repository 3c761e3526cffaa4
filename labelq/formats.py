"""The files people have: JSONL, CSV and Parquet in, the same out; `-` for stdin/stdout.

Records are read one at a time (Parquet in record batches), each with its position in the file
(a JSONL or CSV line, a Parquet row), so a bad record is reported where it is and the others go
on. `fields` maps a template field to the column that holds it (`text=review`).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Literal

from labelq.errors import InputError
from labelq.jsonl import count_lines
from labelq.jsonl import read_records as read_jsonl_records

Format = Literal["jsonl", "csv", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "parquet")
_SUFFIXES: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
Record = tuple[int, dict[str, Any]] | InputError


def detect(path: str | Path, explicit: str | None = None) -> Format:
    """The format named, or the one the file's extension says (`-`: JSONL)."""
    if explicit:
        if explicit not in FORMATS:
            raise InputError(f"unknown format {explicit!r}; one of {list(FORMATS)}", field="format")
        return explicit
    if str(path) == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise InputError(
            f"cannot tell the format of {path} from its extension: pass --format "
            f"({', '.join(FORMATS)})",
            field="format",
        )
    return _SUFFIXES[suffix]


def parse_mapping(pairs: list[str] | None) -> dict[str, str]:
    """`["text=review", ...]` -> {"text": "review"}: template field <- column."""
    mapping: dict[str, str] = {}
    for pair in pairs or []:
        field, sep, column = pair.partition("=")
        if not sep or not field or not column:
            raise InputError(f"{pair!r}: write FIELD=COLUMN, e.g. text=review", field="field")
        mapping[field] = column
    return mapping


def _renamed(record: dict[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    if not mapping:
        return record
    out = dict(record)
    for field, column in mapping.items():
        if column in out:
            out[field] = out.pop(column)
    return out


def read(
    path: str | Path, fmt: Format, mapping: Mapping[str, str] | None = None
) -> Iterator[Record]:
    """Every record of a file (or stdin), numbered from 1, or an `InputError` where one is bad."""
    mapping = mapping or {}
    for record in _read(path, fmt):
        yield (
            record if isinstance(record, InputError) else (record[0], _renamed(record[1], mapping))
        )


def read_stream(
    stream: IO[bytes], fmt: Format, name: str, mapping: Mapping[str, str] | None = None
) -> Iterator[Record]:
    """As `read`, from a file already open (named `name` in errors)."""
    mapping = mapping or {}
    for record in _records(stream, fmt, name):
        yield (
            record if isinstance(record, InputError) else (record[0], _renamed(record[1], mapping))
        )


def _read(path: str | Path, fmt: Format) -> Iterator[Record]:
    where = "stdin" if str(path) == "-" else str(path)
    if fmt == "parquet":
        yield from _read_parquet(path)
        return
    with _open_binary(path) as stream:
        yield from _records(stream, fmt, where)


def _records(stream: IO[bytes], fmt: Format, where: str) -> Iterator[Record]:
    """The records of an open file in one of the formats."""
    if fmt == "parquet":
        yield from _parquet_records(stream, where)
        return
    if fmt == "jsonl":
        yield from read_jsonl_records(stream)
        return
    # CSV: lines are decoded one by one, so a line that is not UTF-8 fails alone.
    errors: list[InputError] = []

    def lines() -> Iterator[str]:
        for number, raw in enumerate(stream, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(InputError(f"not valid UTF-8 (byte {exc.start + 1})", line=number))
                yield "\n"

    reader = csv.DictReader(lines())
    for row in reader:
        yield from errors
        errors.clear()
        number = reader.line_num
        if None in row or any(v is None for v in row.values()):
            columns = reader.fieldnames or []
            yield InputError(
                f"{where}: expected {len(columns)} columns ({', '.join(columns)})",
                line=number,
            )
            continue
        yield number, dict(row)
    yield from errors


def _open_binary(path: str | Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def _read_parquet(path: str | Path) -> Iterator[Record]:
    source: Any = sys.stdin.buffer if str(path) == "-" else str(path)
    yield from _parquet_records(source, str(path))


def _parquet_records(source: Any, where: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(source)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {where} as Parquet: {exc}") from None
    number = 0
    for batch in file.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def count(path: str | Path, fmt: Format) -> int | None:
    """Records in a file, for a progress bar's total (None for stdin: it can be read once)."""
    if str(path) == "-":
        return None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(str(path)).metadata.num_rows)
        except (OSError, ValueError):
            return None
    try:
        with open(path, "rb") as f:
            lines = count_lines(f)
    except OSError:
        return None
    return lines - 1 if fmt == "csv" else lines


# -- writing -------------------------------------------------------------------------------------
FLAT_FIELDS = ["custom_id", "status", "label", "confidence", "margin", "entropy", "energy"]


def flat_row(row: Mapping[str, Any], labels: list[str]) -> dict[str, Any]:
    """A result row as flat columns (CSV, Parquet): the readings, p_<label> per label, the
    label set (conformal) joined by `|`, where it failed, and the whole row as JSON."""
    probs = row.get("probs") or {}
    label_set = row.get("label_set")
    out = {k: row.get(k) for k in FLAT_FIELDS}
    if out["custom_id"] is not None:
        out["custom_id"] = str(out["custom_id"])
    out["status"] = out["status"] or ("failed" if "error" in row else "succeeded")
    for label in labels:
        out[f"p_{label}"] = probs.get(label)
    out["label_set"] = "|".join(label_set) if label_set is not None else None
    out["line"] = row.get("line")
    out["error"] = row.get("error")
    out["field"] = row.get("field")
    out["result"] = json.dumps(row, ensure_ascii=False)
    return out


class Writer:
    """Writes result rows to a file (or stdout) in one of the formats, in order."""

    def __init__(self, path: str | Path, fmt: Format, labels: list[str]):
        self.path, self.fmt, self.labels = path, fmt, labels
        self._buffer: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._text: IO[str] | None = None
        self._csv: Any = None
        if fmt != "parquet":
            self._text = (
                sys.stdout if str(path) == "-" else open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115
            )
            if fmt == "csv":
                columns = list(flat_row({}, labels))
                self._csv = csv.DictWriter(self._text, fieldnames=columns)
                self._csv.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        if self.fmt == "jsonl":
            assert self._text is not None
            self._text.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            self._csv.writerow(flat_row(row, self.labels))
        else:
            self._buffer.append(flat_row(row, self.labels))
            if len(self._buffer) >= 4096:
                self._flush_parquet()

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                ("custom_id", pa.string()),
                ("status", pa.string()),
                ("label", pa.string()),
                *[(k, pa.float64()) for k in ("confidence", "margin", "entropy", "energy")],
                *[(f"p_{label}", pa.float64()) for label in self.labels],
                ("label_set", pa.string()),
                ("line", pa.int64()),
                ("error", pa.string()),
                ("field", pa.string()),
                ("result", pa.string()),
            ]
        )

    def _parquet_writer(self) -> Any:
        import pyarrow.parquet as pq

        if self._parquet is None:
            sink: Any = sys.stdout.buffer if str(self.path) == "-" else str(self.path)
            self._parquet = pq.ParquetWriter(sink, self._schema())
        return self._parquet

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self._buffer:
            table = pa.Table.from_pylist(self._buffer, schema=self._schema())
            self._parquet_writer().write_table(table)
            self._buffer = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush_parquet()
            self._parquet_writer().close()  # no rows: still a valid, empty file
        elif self._text is not None:
            self._text.flush()
            if self._text is not sys.stdout:
                self._text.close()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
