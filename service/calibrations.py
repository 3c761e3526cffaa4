"""Calibrations: requested through the API, fitted by a worker (contextual calibration needs
the model), activated in one transaction, applied when results are written."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from db import calibrations as calibration_rows
from db import jobs as job_rows
from db.classifiers import classifier_by_id, classifier_versions, get_classifier, spec_of
from db.models import Calibration, CalibrationStatus, Classifier
from labelq import calibration
from labelq.errors import InputError, LabelqError
from labelq.scoring import Item, ItemResult, Scorer
from labelq.spec import ClassifierSpec
from service.context import Ctx
from service.dispatch import queue_for
from service.jobs import items

log = logging.getLogger(__name__)

ScorerFor = Callable[[str], Scorer]


class CalibrationRequest(BaseModel):
    method: str = Field(
        description="temperature | vector | platt | isotonic | contextual | batch | conformal"
    )
    job_id: str | None = Field(None, description="job whose gold-labelled results to fit on")
    version: int | None = Field(None, description="classifier version; default: the job's")
    holdout: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    bins: int = Field(15, ge=1, le=1000)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="method options: alpha, score (conformal); inputs (contextual) ...",
    )
    activate: bool = Field(False, description="activate once fitted")


class CalibrationOut(BaseModel):
    id: int
    classifier: str
    version: int
    method: str
    status: CalibrationStatus
    active: bool
    params: dict[str, Any]
    fitted_on: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Calibration, classifier: Classifier) -> CalibrationOut:
        return cls(
            id=row.id,
            classifier=classifier.name,
            version=classifier.version,
            method=row.method,
            status=CalibrationStatus(row.status),
            active=row.active,
            params=row.params,
            fitted_on=row.fitted_on,
            metrics=row.metrics,
            error=row.error,
            created_at=row.created_at,
        )


# -- the API side --------------------------------------------------------------------------------
def request_fit(ctx: Ctx, name: str, body: CalibrationRequest) -> CalibrationOut:
    """Store a calibration in `fitting` and hand the fit to a worker of the model's queue."""
    calibrator = calibration.make(body.method, **body.options)  # checks method and options
    with ctx.tx() as s:
        if body.job_id:
            job = job_rows.get_job(s, body.job_id, tenant=ctx.tenant)
            classifier = job_rows.job_classifier(s, job)
            if classifier.name != name:
                raise InputError(
                    f"job {body.job_id} ran classifier {classifier.name!r}", field="job_id"
                )
            if body.version is not None and body.version != classifier.version:
                raise InputError(
                    f"job {body.job_id} ran version {classifier.version}", field="version"
                )
            model = job.model
        else:
            if not isinstance(calibrator, calibration.ContextualCalibration):
                raise InputError(f"{body.method} is fitted on a job's results", field="job_id")
            classifier = get_classifier(s, name, body.version, tenant=ctx.owner)
            model = ctx.settings.resolve_model(spec_of(classifier).model)
        fitted_on = {
            "job_id": body.job_id,
            "holdout": body.holdout,
            "seed": body.seed,
            "bins": body.bins,
            "options": body.options,
            "model": model,
            "activate": body.activate,
        }
        row = calibration_rows.add_calibration(s, classifier.id, body.method, fitted_on)
        out = CalibrationOut.of(row, classifier)
    ctx.dispatcher.dispatch_fit(row.id, queue_for(model))
    return out


def list_for(ctx: Ctx, name: str, version: int | None) -> list[CalibrationOut]:
    with ctx.reads() as s:
        classifiers = {
            c.id: c
            for c in classifier_versions(s, name, tenant=ctx.owner)
            if version is None or c.version == version
        }
        return [
            CalibrationOut.of(row, classifiers[row.classifier_id])
            for row in calibration_rows.list_calibrations(s, classifiers)
        ]


def get(ctx: Ctx, name: str, calibration_id: int) -> CalibrationOut:
    with ctx.reads() as s:
        return CalibrationOut.of(
            *calibration_rows.calibration_of(s, calibration_id, name, tenant=ctx.tenant)
        )


def activate(ctx: Ctx, name: str, calibration_id: int) -> CalibrationOut:
    """Make this the classifier version's active calibration, in one transaction."""
    with ctx.tx() as s:
        row, classifier = calibration_rows.calibration_of(
            s, calibration_id, name, tenant=ctx.tenant
        )
        calibration_rows.activate(s, row)
        return CalibrationOut.of(row, classifier)


# -- the worker side -----------------------------------------------------------------------------
def under(
    active: Calibration | None, spec: ClassifierSpec, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Result rows under a classifier's active calibration (None: as they are). Each chunk is
    its own batch for batch calibration."""
    if active is None:
        return rows
    calibrator = calibration.load(active.method, active.params)
    info = {"id": active.id, "method": active.method}
    return calibration.calibrate_rows(rows, spec.label_names, spec.bias_vector(), calibrator, info)


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


def fit(ctx: Ctx, scorer_for: ScorerFor, calibration_id: int) -> None:
    """Fit a calibration the API stored in `fitting` and record the outcome. Reading the job's
    results and recording the fit are separate short transactions: the fit itself may score."""
    try:
        _fit(ctx, scorer_for, calibration_id)
    except LabelqError as exc:
        with ctx.tx() as s:
            calibration_rows.record_fit(s, calibration_id, error=str(exc))
    except Exception as exc:
        log.exception("fitting calibration %d failed", calibration_id)
        with ctx.tx() as s:
            calibration_rows.record_fit(s, calibration_id, error=f"fit failed: {exc}")


def _fit(ctx: Ctx, scorer_for: ScorerFor, calibration_id: int) -> None:
    with ctx.reads() as s:
        row = calibration_rows.get_calibration(s, calibration_id)
        if row.status != CalibrationStatus.fitting:
            return
        spec = spec_of(classifier_by_id(s, row.classifier_id))
        request = dict(row.fitted_on)
        method = row.method
    labels = spec.label_names
    index = {label: k for k, label in enumerate(labels)}
    calibrator = calibration.make(method, **dict(request.get("options") or {}))
    results: list[dict[str, Any]] = []
    y: np.ndarray | None = None
    if request.get("job_id"):
        scored = [i for i in items(ctx, request["job_id"]) if i.result is not None]
        labelled = [i for i in scored if i.gold_label is not None]
        if labelled:
            y = np.array([index[i.gold_label or ""] for i in labelled], dtype=np.int64)
            results = [i.result or {} for i in labelled]
        elif not calibrator.needs_labels:
            # Label-free methods fit on every scored item (and report no held-out metrics).
            results = [i.result or {} for i in scored]
    z = calibration.result_log_probs(results, labels, spec.bias_vector())
    content_free = None
    if isinstance(calibrator, calibration.ContextualCalibration):
        content_free = content_free_log_probs(scorer_for(request["model"]), spec, calibrator.inputs)
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
    with ctx.tx() as s:
        row = calibration_rows.record_fit(
            s,
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
            calibration_rows.activate(s, row)
