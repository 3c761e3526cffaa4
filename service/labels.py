"""Gold labels for a job's items: parsed from JSON or JSONL, checked, stored. Every rejected
entry says why (unknown id, unknown label, duplicate, bad line); none is dropped silently."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from db import jobs as job_rows
from db.classifiers import spec_of
from labelq.errors import InputError
from labelq.jsonl import read_records

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


def store_labels(
    s: Session, job_id: str, entries: list[Entry], tenant: str | None = None
) -> LabelsReport:
    """Check entries against the job's labels and items and store the good ones."""
    job = job_rows.get_job(s, job_id, tenant=tenant)
    valid = set(spec_of(job_rows.job_classifier(s, job)).label_names)
    rejected: list[dict[str, Any]] = []
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
    s.commit()
    return LabelsReport(accepted=len(labels), rejected=rejected)
