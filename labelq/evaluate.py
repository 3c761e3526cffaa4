"""`labelq calibrate eval`: metrics of any results file against gold labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labelq import metrics
from labelq.errors import InputError
from labelq.jsonl import read_records

EVAL_KEYS = ("n", "accuracy", "ece", "ece_equal_mass", "mce", "brier", "nll", "auroc", "aurc")


def _jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for entry in read_records(f):
            if isinstance(entry, InputError):
                raise InputError(f"{path}: {entry.message}", line=entry.line)
            rows.append(entry)
    return rows


def evaluate_files(scored: Path, gold: Path, bins: int = 15) -> tuple[dict[str, Any], list[str]]:
    """Join results and gold labels on custom_id; return (metrics, notes on what was skipped)."""
    golds: dict[str, str] = {}
    for number, row in _jsonl(gold):
        if "custom_id" not in row or "label" not in row:
            raise InputError(
                f"{gold}: needs custom_id and label",
                line=number,
                field="label" if "custom_id" in row else "custom_id",
            )
        golds[str(row["custom_id"])] = row["label"]
    labels: list[str] | None = None
    probs, y, notes = [], [], []
    unscored = 0
    for _, row in _jsonl(scored):
        if "probs" not in row:
            unscored += 1
            continue
        labels = labels or list(row["probs"])
        key = str(row.get("custom_id"))
        if key not in golds:
            continue
        label = golds.pop(key)
        if label not in labels:
            raise InputError(
                f"{gold}: unknown label {label!r} for custom_id {key}; labels are {labels}",
                field="label",
            )
        probs.append([row["probs"][name] for name in labels])
        y.append(labels.index(label))
    if unscored:
        notes.append(f"{unscored} result lines have no probabilities (failed items); skipped")
    if golds:
        notes.append(f"{len(golds)} gold labels match no scored result; skipped")
    if not y:
        raise InputError("no scored result has a gold label: check the custom_ids")
    report = metrics.report(np.array(probs), np.array(y), bins).model_dump()
    return {key: report[key] for key in EVAL_KEYS}, notes


def format_table(values: dict[str, Any]) -> str:
    lines = [f"{'metric':<16}{'value':>12}"]
    for key, value in values.items():
        shown = "n/a" if value is None else (f"{value}" if key == "n" else f"{value:.6f}")
        lines.append(f"{key:<16}{shown:>12}")
    return "\n".join(lines)
