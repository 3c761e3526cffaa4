"""Results: a job's rows as stored or under any calibration, paged, exported, measured.

Raw label scores are stored with every result, so any result can be served under any
calibration: `resolve_view` picks how, `View.rows` recomputes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel

from db import calibrations as calibration_rows
from db import jobs as job_rows
from db import reads
from db.classifiers import spec_of
from db.models import RESULT_TEXT_COLUMNS, Calibration, CalibrationStatus, ItemStatus
from labelq import calibration, metrics
from labelq.errors import Conflict, InputError
from labelq.metrics import ReliabilityBin
from service.context import Ctx
from service.jobs import items

CALIBRATION_CHOICES = "none, active or a calibration id"


def result_record(item: Any) -> dict[str, Any]:
    """One result row of a stored item (a row of `db.models.RESULT_COLUMNS`): the scorer's
    fields for a scored item, else its status and error."""
    custom_id = item.custom_id
    if item.status == ItemStatus.succeeded and item.result is not None:
        row = {**item.result, "custom_id": custom_id, "status": item.status}
        if item.gold_label is not None:
            row["gold_label"] = item.gold_label
        return row
    row = {"custom_id": custom_id, "status": item.status}
    if item.line is not None:
        row["line"] = item.line
    if item.error:
        row["error"] = item.error
    if item.error_field:
        row["field"] = item.error_field
    return row


def stored_record(item: tuple[Any, ...]) -> dict[str, Any] | orjson.Fragment:
    """`result_record` of a tuple of `db.models.RESULT_TEXT_COLUMNS`, for a page served as
    stored: a scored item's result is the JSON object the worker wrote (its custom_id is the
    item's), passed through as text and closed with the status and gold label, not parsed and
    encoded again (that was a fifth of the API process's CPU in bench/load.py). The row is
    unpacked by position: a SQLAlchemy Row's attributes cost half a microsecond each, three
    times a row, and were most of a 50-row page's 130 us in Python."""
    status, text, gold_label = item[_STATUS], item[_RESULT], item[_GOLD_LABEL]
    if status == ItemStatus.succeeded and text is not None:
        body = text.rstrip()
        if body[:1] == "{" and body[-1:] == "}" and '"' in body:  # an object with a key
            tail = SUCCEEDED_TAIL
            if gold_label is not None:
                tail = tail[:-1] + b',"gold_label":' + orjson.dumps(gold_label) + b"}"
            return orjson.Fragment(body[:-1].encode() + tail)
        fields = dict(zip(RESULT_NAMES, item, strict=True))
        return result_record(SimpleNamespace(**{**fields, "result": orjson.loads(text)}))
    return result_record(SimpleNamespace(**dict(zip(RESULT_NAMES, item, strict=True))))


SUCCEEDED_TAIL = b',"status":' + orjson.dumps(ItemStatus.succeeded.value) + b"}"
RESULT_NAMES = tuple(column.key for column in RESULT_TEXT_COLUMNS)
# Positions in a result row (RESULT_COLUMNS and RESULT_TEXT_COLUMNS share their order), found
# from the names: a reordered column list cannot silently shift what is read.
_IDX, _STATUS, _RESULT, _GOLD_LABEL = (
    RESULT_NAMES.index(name) for name in ("idx", "status", "result", "gold_label")
)


@dataclass
class View:
    """How results are served: as stored (`stored`), or recomputed under a calibrator (None:
    uncalibrated)."""

    stored: bool
    labels: list[str]
    bias: list[float]
    calibrator: calibration.Calibrator | None = None
    info: dict[str, Any] | None = None

    def rows(self, items: Sequence[Any]) -> list[dict[str, Any]]:
        """Result rows of rows of `db.models.RESULT_COLUMNS`."""
        rows = [result_record(i) for i in items]
        if self.stored:
            return rows
        scored = [k for k, i in enumerate(items) if i.status == ItemStatus.succeeded and i.result]
        redone = calibration.calibrate_rows(
            [rows[k] for k in scored], self.labels, self.bias, self.calibrator, self.info
        )
        for k, row in zip(scored, redone, strict=True):
            rows[k] = row
        return rows


def calibration_choice(choice: str, choices: str = CALIBRATION_CHOICES) -> int:
    """The calibration id a choice names (not `none`, `active` or `stored`)."""
    try:
        return int(choice)
    except ValueError:
        raise InputError(f"calibration must be {choices}", field="calibration") from None


def check_ready(row: Calibration) -> None:
    if row.status != CalibrationStatus.ready:
        raise Conflict(f"calibration {row.id} is {row.status}", field="calibration")


def resolve_view(ctx: Ctx, job_id: str, choice: str | None) -> View:
    """How the job's results are served: `choice` None (as stored), `none` (uncalibrated),
    `active` (uncalibrated when none is active), or a calibration id of the job's classifier
    version. NotFound for a job the caller cannot see."""
    with ctx.reads() as s:
        job, classifier = job_rows.get_job_and_classifier(s, job_id, tenant=ctx.tenant)
        job_rows.readable(job)
        spec = spec_of(classifier)
        view = View(choice is None, spec.label_names, spec.bias_vector())
        if choice is None or choice == "none":
            return view
        if choice == "active":
            row = calibration_rows.active_calibration(s, job.classifier_id)
            if row is None:
                return view
        else:
            row = calibration_rows.get_calibration(
                s, calibration_choice(choice), {job.classifier_id}
            )
    check_ready(row)
    method, params, view.info = row.method, row.params, {"id": row.id, "method": row.method}
    if method == calibration.BatchCalibration.method:
        # Served page by page, the batch is still the whole job: estimate its prior once.
        scored = [i.result for i in items(ctx, job_id) if i.result is not None]
        z = calibration.result_log_probs(scored, view.labels, view.bias)
        view.calibrator = calibration.BatchCalibration.over_whole_batch(z)
    else:
        view.calibrator = calibration.load(method, params)
    return view


def iter_rows(ctx: Ctx, job_id: str, view: View) -> Iterator[dict[str, Any]]:
    """Every result row of a job (resolved as `view`) in input order, a page at a time."""
    rows = ctx.pages(
        lambda s, after, size: reads.result_rows(s, job_id, after, size),
        -1,
        lambda row: int(row.idx),
    )
    for page in _batched(rows, 1000):
        yield from view.rows(page)


def _batched(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    page: list[Any] = []
    for row in rows:
        page.append(row)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


class ResultsPage(BaseModel):
    data: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class Page:
    """A `ResultsPage` as `page` builds it: a row served as stored may be an orjson
    `Fragment` of its JSON text, so encode it with orjson."""

    data: list[dict[str, Any] | orjson.Fragment]
    next_cursor: str | None


def page(ctx: Ctx, job_id: str, choice: str | None, cursor: str | None, limit: int) -> Page:
    """A page of results after `cursor`, under the calibration `choice` names. As stored, the
    page itself is the only read (runs on the API's event loop); under a calibration the job is
    resolved first (a batch calibration reads the whole job for its prior)."""
    try:
        after = int(cursor) if cursor else -1
    except ValueError:
        raise InputError(
            "cursor must be a next_cursor value from a previous page", field="cursor"
        ) from None
    rows: list[dict[str, Any] | orjson.Fragment]
    if choice is None:
        # The join on the job keeps other tenants out. No row: a missing job (NotFound) or a
        # page past the end.
        with ctx.reads() as s:
            stored = reads.stored_result_rows(s, job_id, after, limit + 1, tenant=ctx.tenant)
            if not stored:  # a missing job, a job erased, or a page past the end
                job_rows.readable(job_rows.get_job(s, job_id, tenant=ctx.tenant))
        rows = [stored_record(i) for i in stored[:limit]]
        more = len(stored) > limit
        last = stored[limit - 1][_IDX] if more else None
    else:
        view = resolve_view(ctx, job_id, choice)
        with ctx.reads() as s:
            found = reads.result_rows(s, job_id, after, limit + 1)
        rows = list(view.rows(found[:limit]))
        more = len(found) > limit
        last = found[limit - 1][_IDX] if more else None
    return Page(rows, str(last) if more else None)


EXPORT_PIECE = 1 << 16  # one write per ~64 KiB, not one per row: per-write overhead dominated


def export(ctx: Ctx, job_id: str, choice: str | None, format: str) -> Iterator[bytes]:
    """The whole job's results as JSONL or CSV, streamed in pieces; the job is resolved now
    (NotFound, a bad calibration) and read page by page as the stream is consumed."""
    view = resolve_view(ctx, job_id, choice)
    return export_jsonl(ctx, job_id, view) if format == "jsonl" else export_csv(ctx, job_id, view)


def export_jsonl(ctx: Ctx, job_id: str, view: View) -> Iterator[bytes]:
    lines: list[str] = []
    size = 0
    for row in iter_rows(ctx, job_id, view):
        line = json.dumps(row, ensure_ascii=False) + "\n"
        lines.append(line)
        size += len(line)
        if size > EXPORT_PIECE:
            yield "".join(lines).encode()
            lines, size = [], 0
    yield "".join(lines).encode()


CSV_FIELDS = ["custom_id", "status", "label", "confidence", "margin", "entropy", "energy"]


def export_csv(ctx: Ctx, job_id: str, view: View) -> Iterator[bytes]:
    labels = view.labels
    header = [*CSV_FIELDS, *(f"p_{label}" for label in labels), "label_set", "line", "error"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for row in iter_rows(ctx, job_id, view):
        probs = row.get("probs", {})
        label_set = row.get("label_set")
        writer.writerow(
            [row.get(k, "") for k in CSV_FIELDS]
            + [probs.get(label, "") for label in labels]
            + [
                "|".join(label_set) if label_set is not None else "",
                row.get("line", ""),
                row.get("error", ""),
            ]
        )
        if buf.tell() > EXPORT_PIECE:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


class JobMetrics(BaseModel):
    calibration: dict[str, Any] | None
    metrics: metrics.MetricReport
    reliability: list[ReliabilityBin]
    set_coverage: float | None = None
    mean_set_size: float | None = None


def job_metrics(ctx: Ctx, job_id: str, choice: str | None, bins: int) -> JobMetrics:
    """How trustworthy the confidences are on the job's gold-labelled items, under the
    calibration `choice` names."""
    view = resolve_view(ctx, job_id, choice)
    rows = [r for r in iter_rows(ctx, job_id, view) if r.get("gold_label") and r.get("probs")]
    if not rows:
        raise Conflict("no scored item of this job has a gold label yet", field="labels")
    index = {label: k for k, label in enumerate(view.labels)}
    probs = np.array([[r["probs"][label] for label in view.labels] for r in rows])
    y = np.array([index[r["gold_label"]] for r in rows])
    out = JobMetrics(
        calibration=view.info if view.calibrator else None,
        metrics=metrics.report(probs, y, bins),
        reliability=metrics.reliability_bins(probs, y, bins),
    )
    if any("label_set" in r for r in rows):
        sets = np.array([[label in r.get("label_set", []) for label in view.labels] for r in rows])
        out.set_coverage = metrics.set_coverage(sets, y)
        out.mean_set_size = metrics.mean_set_size(sets)
    return out
