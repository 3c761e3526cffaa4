"""Gold labels for a job's items: parsed from JSON or JSONL, checked, stored. Every rejected
entry says why (unknown id, unknown label, duplicate, bad line); none is dropped silently."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from db import jobs as job_rows
from db.classifiers import spec_of
from labelq.errors import InputError
from labelq.jsonl import read_records
from service.context import Ctx

# (line or None, custom_id, label) as given
Entry = tuple[int | None, Any, Any]


class LabelsReport(BaseModel):
    accepted: int
    rejected: list[dict[str, Any]] = Field(description="Each with line/custom_id and the error.")


def parse_labels(body: bytes, jsonl: bool) -> tuple[list[Entry], list[dict[str, Any]]]:
    """JSON `{"custom_id": label, ...}` or `[{"custom_id", "label"}, ...]`, or JSONL lines
    `{"custom_id": ..., "label": ...}`. Returns (entries, rejected lines)."""
    entries: list[Entry] = []
    rejected: list[dict[str, Any]] = []
    if jsonl:
        for entry in read_records(body.splitlines()):
            if isinstance(entry, InputError):
                rejected.append({"line": entry.line, "error": entry.message})
                continue
            number, record = entry
            entries.append((number, record.get("custom_id"), record.get("label")))
        return entries, rejected
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON body: {exc.msg}") from None
    if isinstance(data, dict):
        return [(None, k, v) for k, v in data.items()], rejected
    if not isinstance(data, list):
        raise InputError("send an object custom_id -> label, or a list of objects")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            rejected.append({"line": i + 1, "error": "an entry must be an object"})
            continue
        entries.append((i + 1, record.get("custom_id"), record.get("label")))
    return entries, rejected


def set_labels(ctx: Ctx, job_id: str, body: bytes, jsonl: bool) -> LabelsReport:
    """Gold labels for a job's items, from a request body (see `parse_labels`): checked against
    the job's labels and items, the good ones stored in one transaction."""
    entries, rejected = parse_labels(body, jsonl)
    with ctx.tx() as s:
        job = job_rows.readable(job_rows.get_job(s, job_id, tenant=ctx.tenant))
        valid = set(spec_of(job_rows.job_classifier(s, job)).label_names)
        wanted = _wanted(entries, valid, rejected)
        found = job_rows.item_ids_by_custom_id(s, job_id, list(wanted))
        labels: dict[int, str] = {}
        for custom_id, (line, label) in wanted.items():
            if custom_id in found:
                labels[found[custom_id]] = label
            else:
                rejected.append(
                    {
                        "line": line,
                        "custom_id": custom_id,
                        "label": label,
                        "error": "no item of this job has this custom_id",
                        "field": "custom_id",
                    }
                )
        job_rows.set_gold_labels(s, labels)
    return LabelsReport(accepted=len(labels), rejected=rejected)


def _wanted(
    entries: list[Entry], valid: set[str], rejected: list[dict[str, Any]]
) -> dict[str, tuple[int | None, str]]:
    """custom_id -> (line, label) of the entries that name a label of the job; the others are
    added to `rejected` with the reason."""
    wanted: dict[str, tuple[int | None, str]] = {}
    for line, custom_id, label in entries:
        entry = {"line": line, "custom_id": custom_id, "label": label}
        if custom_id is None:
            rejected.append({**entry, "error": "missing custom_id", "field": "custom_id"})
        elif not isinstance(label, str) or label not in valid:
            error = f"unknown label {label!r}; labels are {sorted(valid)}"
            rejected.append({**entry, "error": error, "field": "label"})
        elif str(custom_id) in wanted:
            rejected.append({**entry, "error": "custom_id given twice", "field": "custom_id"})
        else:
            wanted[str(custom_id)] = (line, label)
    return wanted
