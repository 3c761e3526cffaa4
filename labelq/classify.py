"""`labelq classify`: a JSONL file in, a JSONL file of results out, in input order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelq.errors import InputError
from labelq.jsonl import count_lines, read_items
from labelq.scoring import Item, ItemError, ScoredItem, Scorer, batches
from labelq.spec import ClassifierSpec


@dataclass
class ClassifyReport:
    written: int = 0
    failed: int = 0


def output_line(row: ScoredItem) -> dict[str, Any]:
    """One output line: a result, or `{"custom_id", "line", "error", "field"?}`."""
    if isinstance(row, ItemError):
        return {
            "custom_id": row.custom_id,
            **row.model_dump(exclude={"custom_id"}, exclude_none=True),
        }
    return row.model_dump()


def classify_file(
    scorer: Scorer,
    spec: ClassifierSpec,
    input_path: Path,
    output_path: Path,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> ClassifyReport:
    """Score every line of `input_path`; a bad line becomes an error row and the rest go on."""
    from tqdm import tqdm

    report = ClassifyReport()
    with open(input_path, "rb") as raw, open(output_path, "w", encoding="utf-8") as out:
        total = count_lines(raw)
        lines = (line.decode("utf-8", errors="replace") for line in raw)
        with tqdm(total=total, unit="item", desc="classify", disable=not progress) as bar:
            for batch in batches(read_items(lines), batch_size):
                items = [x for x in batch if isinstance(x, Item)]
                scored = iter(scorer.score_batch(spec, items) if items else ())
                for entry in batch:
                    row = next(scored) if isinstance(entry, Item) else _line_error(entry)
                    report.failed += isinstance(row, ItemError)
                    out.write(json.dumps(output_line(row), ensure_ascii=False) + "\n")
                    report.written += 1
                bar.update(len(batch))
    return report


def _line_error(exc: InputError) -> ItemError:
    return ItemError(line=exc.line, error=exc.message, field=exc.field)
