"""Calibration in the worker: applying the active one when results are written, and fitting."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import repo
from db.models import Classifier
from labelq import calibration
from labelq.errors import InputError, LabelqError
from labelq.scoring import Item, ItemResult, Scorer
from labelq.spec import ClassifierSpec

log = logging.getLogger(__name__)


def apply_active_calibration(
    session: Session, classifier_id: int, spec: ClassifierSpec, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], int | None]:
    """Rows under the classifier's active calibration, and its id (None: none is active)."""
    active = repo.active_calibration(session, classifier_id)
    if active is None:
        return rows, None
    calibrator = calibration.load(active.method, active.params)
    info = {"id": active.id, "method": active.method}
    return calibration.calibrate_rows(
        rows, spec.label_names, spec.bias_vector(), calibrator, info
    ), active.id


def content_free_log_probs(scorer: Scorer, spec: ClassifierSpec, inputs: list[str]) -> np.ndarray:
    """Score content-free inputs ("N/A", "", "[MASK]") in the classifier's own prompt: every
    template field is filled with the content-free text."""
    items = [Item(fields=dict.fromkeys(spec.template_variables, text)) for text in inputs]
    rows = []
    for result in scorer.score_batch(spec, items):
        if not isinstance(result, ItemResult):
            raise InputError(
                f"content-free input failed: {result.error}", field="content_free_inputs"
            )
        rows.append(result.model_dump())
    return calibration.result_log_probs(rows, spec.label_names, spec.bias_vector())


def fit_calibration(
    factory: sessionmaker[Session], scorer_for: Callable[[str], Scorer], calibration_id: int
) -> None:
    """Fit a calibration row created by the API (status `fitting`) and store the outcome."""
    try:
        with factory() as s:
            row = repo.get_calibration(s, calibration_id)
            if row.status != "fitting":
                return
            spec = repo.spec_of(s.get_one(Classifier, row.classifier_id))
            request = dict(row.fitted_on)
            method = row.method
        labels = spec.label_names
        index = {label: k for k, label in enumerate(labels)}
        options = dict(request.get("options") or {})
        calibrator = calibration.make(method, **options)
        items: list[Any] = []
        y: np.ndarray | None = None
        if request.get("job_id"):
            items = list(repo.labelled_results(factory, request["job_id"]))
            if items:
                y = np.array([index[item.gold_label or ""] for item in items], dtype=np.int64)
            elif not calibrator.needs_labels:
                # Label-free methods fit on every scored item (and report no held-out metrics).
                items = [i for i in repo.iter_items(factory, request["job_id"]) if i.result]
        z = calibration.result_log_probs(
            [item.result or {} for item in items], labels, spec.bias_vector()
        )
        content_free = None
        if isinstance(calibrator, calibration.ContextualCalibration):
            content_free = content_free_log_probs(
                scorer_for(request["model"]), spec, calibrator.inputs
            )
        elif calibrator.needs_labels and y is None:
            raise InputError(
                f"{method} needs gold labels: POST /v1/jobs/{{id}}/labels first", field="job_id"
            )
        elif not len(z):
            raise InputError(f"{method} calibration needs a job with scored items", field="job_id")
        report = calibration.fit_with_holdout(
            calibrator,
            z,
            y,
            holdout=float(request.get("holdout", 0.2)),
            seed=int(request.get("seed", 0)),
            bins=int(request.get("bins", 15)),
            content_free=content_free,
        )
        repo.finish_calibration(
            factory,
            calibration_id,
            params=report.params,
            metrics=report.model_dump(mode="json", exclude={"params"}),
            fitted_on={
                "n_fit": report.n_fit,
                "n_holdout": report.n_holdout,
                "labelled_items": 0 if y is None else len(y),
            },
        )
        if request.get("activate"):
            with factory() as s:
                classifier_id = repo.get_calibration(s, calibration_id).classifier_id
            repo.activate_calibration(factory, classifier_id, calibration_id)
    except LabelqError as exc:
        repo.finish_calibration(factory, calibration_id, error=str(exc))
    except Exception as exc:
        log.exception("fitting calibration %d failed", calibration_id)
        repo.finish_calibration(factory, calibration_id, error=f"fit failed: {exc}")
