"""Reading JSONL inputs line by line: a bad line becomes an error naming it, the rest go on."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from labelq.errors import InputError
from labelq.scoring import Item

NDJSON = "application/x-ndjson"
# Media types taken as JSON Lines (one JSON value per line).
JSONL_TYPES = (NDJSON, "application/jsonl", "application/x-jsonlines")


def read_records(
    lines: Iterable[str | bytes], start_line: int = 1
) -> Iterator[tuple[int, dict[str, Any]] | InputError]:
    """Yield (line number, object) for each non-blank line, or an `InputError` naming the line
    when it is not valid JSON or not a JSON object."""
    for number, raw in enumerate(lines, start=start_line):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            yield InputError(f"not valid UTF-8 (byte {exc.start + 1})", line=number)
            continue
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=number)
            continue
        if not isinstance(record, dict):
            yield InputError(
                f"a line must be a JSON object, got {type(record).__name__}", line=number
            )
            continue
        yield number, record


def read_items(lines: Iterable[str | bytes], start_line: int = 1) -> Iterator[Item | InputError]:
    """Yield an `Item` for each non-blank line, or an `InputError` naming the line."""
    for entry in read_records(lines, start_line):
        if isinstance(entry, InputError):
            yield entry
            continue
        number, record = entry
        try:
            yield Item.from_record(record, line=number)
        except InputError as exc:
            yield exc


def count_lines(stream: IO[bytes]) -> int:
    """Count lines without decoding them, then rewind (for a progress bar's total)."""
    total = sum(chunk.count(b"\n") for chunk in iter(lambda: stream.read(1 << 20), b""))
    stream.seek(0)
    return total
