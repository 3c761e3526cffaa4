"""`labelq classify`: a file of items in (JSONL, CSV, Parquet, or stdin), a file of results out
(the same formats, or stdout), in input order; optionally under a calibration exported from the
service, so offline scores match the service's."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from labelq import calibration, formats
from labelq.errors import InputError
from labelq.jsonl import items_of
from labelq.scoring import Item, ItemError, ItemResult, ScoredItem, Scorer, batches
from labelq.spec import ClassifierSpec


@dataclass
class ClassifyReport:
    written: int = 0
    failed: int = 0


class ExportedCalibration(BaseModel):
    """A calibration as `labelq calibrate export` writes it."""

    id: int
    classifier: str
    version: int
    method: str
    params: dict[str, Any]
    labels: list[str]

    @classmethod
    def load(cls, path: Path, spec: ClassifierSpec) -> ExportedCalibration:
        try:
            exported = cls.model_validate_json(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}", field="calibration") from None
        except ValueError as exc:
            raise InputError(f"{path} is not an exported calibration: {exc}") from None
        if exported.labels != spec.label_names:
            raise InputError(
                f"{path} calibrates labels {exported.labels}, the spec has {spec.label_names}",
                field="calibration",
            )
        return exported

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "method": self.method}


def output_line(row: ScoredItem) -> dict[str, Any]:
    """One output row: a result, or `{"custom_id", "line", "error", "field"?}`."""
    if isinstance(row, ItemError):
        return {
            "custom_id": row.custom_id,
            **row.model_dump(exclude={"custom_id"}, exclude_none=True),
        }
    return row.model_dump()


def classified(
    scorer: Scorer,
    spec: ClassifierSpec,
    entries: Iterable[Item | InputError],
    *,
    batch_size: int = 64,
    calibrated: ExportedCalibration | None = None,
) -> Iterator[list[tuple[ScoredItem, dict[str, Any]]]]:
    """Each batch of entries scored, as (scored item, output line) pairs in input order; a bad
    entry becomes an error line and the rest go on. Under a calibration, each batch is
    calibrated as one (a batch calibration's own batch): `labelq classify` and the notebook
    API give the same rows for the same inputs and batch size."""
    calibrator = calibration.load(calibrated.method, calibrated.params) if calibrated else None
    for batch in batches(entries, batch_size):
        items = [x for x in batch if isinstance(x, Item)]
        scored = iter(scorer.score_batch(spec, items) if items else ())
        rows = [next(scored) if isinstance(e, Item) else _line_error(e) for e in batch]
        lines = [output_line(row) for row in rows]
        if calibrated is not None:
            ok = [k for k, row in enumerate(rows) if isinstance(row, ItemResult)]
            redone = calibration.calibrate_rows(
                [lines[k] for k in ok],
                spec.label_names,
                spec.bias_vector(),
                calibrator,
                calibrated.info(),
            )
            for k, line in zip(ok, redone, strict=True):
                lines[k] = line
        yield list(zip(rows, lines, strict=True))


def classify_records(
    scorer: Scorer,
    spec: ClassifierSpec,
    records: Iterable[formats.Record],
    writer: formats.Writer,
    *,
    batch_size: int = 64,
    calibrated: ExportedCalibration | None = None,
    total: int | None = None,
    progress: bool = True,
) -> ClassifyReport:
    """Score every record; a bad one becomes an error row and the rest go on."""
    from tqdm import tqdm

    report = ClassifyReport()
    with tqdm(total=total, unit="item", desc="classify", disable=not progress) as bar:
        for batch in classified(
            scorer, spec, items_of(records), batch_size=batch_size, calibrated=calibrated
        ):
            for row, line in batch:
                report.failed += isinstance(row, ItemError)
                writer.write(line)
                report.written += 1
            bar.update(len(batch))
    return report


def classify_file(
    scorer: Scorer,
    spec: ClassifierSpec,
    input_path: Path | str,
    output_path: Path | str,
    *,
    input_format: str | None = None,
    output_format: str | None = None,
    fields: dict[str, str] | None = None,
    calibration_file: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ClassifyReport:
    """`classify_records` from a file (`-`: stdin) to a file (`-`: stdout)."""
    in_fmt = formats.detect(input_path, input_format)
    out_fmt = formats.detect(output_path, output_format)
    calibrated = ExportedCalibration.load(calibration_file, spec) if calibration_file else None
    total = formats.count(input_path, in_fmt)
    records = formats.read(input_path, in_fmt, fields)
    with formats.Writer(output_path, out_fmt, spec.label_names) as writer:
        return classify_records(
            scorer,
            spec,
            records,
            writer,
            batch_size=batch_size,
            calibrated=calibrated,
            total=total,
            progress=progress,
        )


def _line_error(exc: InputError) -> ItemError:
    return ItemError(line=exc.line, error=exc.message, field=exc.field)
