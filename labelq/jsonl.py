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


def depth(value: Any, limit: int) -> int:
    """How deeply `value` nests lists and objects, counted up to `limit + 1` (iteratively)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def read_records(
    lines: Iterable[str | bytes], start_line: int = 1, max_depth: int = 32
) -> Iterator[tuple[int, dict[str, Any]] | InputError]:
    """Yield (line number, object) for each non-blank line, or an `InputError` naming the line
    when it is not UTF-8, not valid JSON, not a JSON object, or nested deeper than
    `max_depth`."""
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
        except RecursionError:
            yield InputError(f"nested deeper than {max_depth} levels", line=number)
            continue
        if depth(record, max_depth) > max_depth:
            yield InputError(f"nested deeper than {max_depth} levels", line=number)
            continue
        if not isinstance(record, dict):
            yield InputError(
                f"a line must be a JSON object, got {type(record).__name__}", line=number
            )
            continue
        yield number, record


def read_items(
    lines: Iterable[str | bytes], start_line: int = 1, max_depth: int = 32
) -> Iterator[Item | InputError]:
    """Yield an `Item` for each non-blank line, or an `InputError` naming the line."""
    return items_of(read_records(lines, start_line, max_depth))


def items_of(
    records: Iterable[tuple[int, dict[str, Any]] | InputError],
) -> Iterator[Item | InputError]:
    """Numbered records (from any format) as `Item`s; a bad one as an `InputError`."""
    for entry in records:
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
