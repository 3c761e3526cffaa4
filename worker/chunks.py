"""Scoring one chunk of a job: claim, score in one batch, write in one transaction.

Plain functions: the Celery task and the embedded in-process worker both call `process_chunk`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import repo
from labelq.scoring import ItemError, ItemResult, ScoredItem, Scorer
from labelq.spec import ClassifierSpec

log = logging.getLogger(__name__)

ScorerFor = Callable[[str], Scorer]
Calibrate = Callable[
    [Session, int, ClassifierSpec, list[dict[str, Any]]], tuple[list[dict[str, Any]], int | None]
]


def score_items(scorer: Scorer, spec: ClassifierSpec, items: list[Any]) -> list[ScoredItem]:
    """Score a batch; if the batch as a whole fails, find the items at fault one by one. When
    every item fails alone too, the fault is not the items': re-raise so the task retries."""
    try:
        return scorer.score_batch(spec, items)
    except Exception as batch_error:
        log.warning("batch of %d failed (%s); scoring one by one", len(items), batch_error)
        out: list[ScoredItem] = []
        for item in items:
            try:
                out.extend(scorer.score_batch(spec, [item]))
            except Exception as exc:
                out.append(
                    ItemError(
                        custom_id=item.custom_id, line=item.line, error=f"scoring failed: {exc}"
                    )
                )
        if items and all(
            isinstance(r, ItemError) and r.error.startswith("scoring failed") for r in out
        ):
            raise batch_error
        return out


def process_chunk(
    factory: sessionmaker[Session],
    scorer_for: ScorerFor,
    job_id: str,
    seq: int,
    max_attempts: int,
    calibrate: Calibrate | None = None,
) -> bool:
    """Score chunk `seq` of a job; False when there was nothing to do (done, cancelled)."""
    work = repo.claim_chunk(factory, job_id, seq, max_attempts)
    if work is None:
        return False
    scored: list[ScoredItem] = []
    if work.items:
        scored = score_items(scorer_for(work.model), work.spec, [item for _, item in work.items])
    succeeded = [row.model_dump(mode="json") for row in scored if isinstance(row, ItemResult)]
    calibration_id = None
    if calibrate is not None and succeeded:
        with factory() as s:
            succeeded, calibration_id = calibrate(s, work.classifier_id, work.spec, succeeded)
    calibrated = iter(succeeded)
    results: dict[int, tuple[dict[str, Any] | None, str | None]] = {}
    for (item_id, _), row in zip(work.items, scored, strict=True):
        if isinstance(row, ItemResult):
            results[item_id] = (next(calibrated), None)
        else:
            results[item_id] = (None, row.error)
    written = repo.complete_chunk(factory, work, results, calibration_id)
    if not written:
        log.info(
            "chunk %s/%d was completed by another delivery; results not rewritten", job_id, seq
        )
    return written
