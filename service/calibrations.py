"""Calibrations: requested through the API, fitted by a worker (contextual calibration needs
the model), activated in one transaction, applied when results are written."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from scipy.special import softmax

from db import calibrations as calibration_rows
from db import chunks as chunk_rows
from db import jobs as job_rows
from db.classifiers import classifier_by_id, classifier_versions, get_classifier, spec_of
from db.models import Calibration, CalibrationStatus, Classifier, JobItem
from labelq import calibration, estimation, labelscreen
from labelq.errors import InputError, LabelqError
from labelq.scoring import Item, ItemResult, Scorer
from labelq.spec import ClassifierSpec
from service.context import Ctx
from service.dispatch import queue_for, send_fit
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
    exclude_label_issues: bool = Field(
        False,
        description="leave out of the fit the gold labels the model contradicts as confidently "
        "as it backs its own right answers (confident learning); they are reported either way",
    )


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
            "exclude_label_issues": body.exclude_label_issues,
        }
        row = calibration_rows.add_calibration(s, classifier.id, body.method, fitted_on)
        out = CalibrationOut.of(row, classifier)
    send_fit(ctx, row.id, queue_for(model))
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
    """Fit a calibration the API stored in `fitting` and record the outcome, under a lease
    renewed while it fits (a fit whose worker died is sent again by the reconciler, a bounded
    number of times). Reading the job's results and recording the fit are separate short
    transactions: the fit itself may score."""
    settings = ctx.settings
    with ctx.tx() as s:
        claimed = calibration_rows.claim_fit(
            s,
            calibration_id,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_chunk_attempts,
        )
    if claimed is None:
        return  # fitted, failed, given up, or another worker fits it now
    with _leased(ctx, calibration_id):
        try:
            _fit(ctx, scorer_for, calibration_id)
        except LabelqError as exc:
            with ctx.tx() as s:
                calibration_rows.record_fit(s, calibration_id, error=str(exc))
        except Exception as exc:
            log.exception("fitting calibration %d failed", calibration_id)
            with ctx.tx() as s:
                calibration_rows.record_fit(s, calibration_id, error=f"fit failed: {exc}")


@contextmanager
def _leased(ctx: Ctx, calibration_id: int) -> Iterator[None]:
    """Renew a fit's lease every third of it while the block runs."""
    lease = ctx.settings.lease_seconds
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lease / 3):
            try:
                with ctx.tx() as s:
                    if not calibration_rows.renew_fit(s, calibration_id, lease):
                        return
            except Exception as exc:
                log.warning("could not renew the lease of fit %d: %s", calibration_id, exc)

    keeper = threading.Thread(target=renew, name=f"fit-lease-{calibration_id}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=10)


def _scores(
    ctx: Ctx, job_id: str, spec: ClassifierSpec, every_scored: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[str]]:
    """A job's uncalibrated log-probabilities, read a page at a time: those of its
    gold-labelled items with their labels' indices, and (when `every_scored`) those of every
    scored item, and the labelled items' names (custom id, else `#position`). Only the (n, K)
    arrays are held, never the job's rows."""
    labels, bias = spec.label_names, spec.bias_vector()
    index = {label: k for k, label in enumerate(labels)}
    labelled: list[np.ndarray] = []
    gold: list[int] = []
    scored: list[np.ndarray] = []
    names: list[str] = []
    page: list[JobItem] = []

    def flush() -> None:
        rows = [i.result or {} for i in page]
        if every_scored and rows:
            scored.append(calibration.result_log_probs(rows, labels, bias))
        with_gold = [i for i in page if i.gold_label is not None]
        if with_gold:
            labelled.append(
                calibration.result_log_probs([i.result or {} for i in with_gold], labels, bias)
            )
            gold.extend(index[i.gold_label or ""] for i in with_gold)
            names.extend(i.custom_id or f"#{i.idx}" for i in with_gold)
        page.clear()

    for item in items(ctx, job_id):
        if item.result is not None:
            page.append(item)
            if len(page) >= 1000:
                flush()
    flush()
    k = len(labels)
    z_labelled = np.concatenate(labelled) if labelled else np.empty((0, k))
    y = np.array(gold, dtype=np.int64) if gold else None
    z_scored = np.concatenate(scored) if scored else np.empty((0, k))
    return z_labelled, y, z_scored, names


SCREEN_EXAMPLES = 20


def _screen(
    z: np.ndarray, y: np.ndarray, names: list[str], spec: ClassifierSpec, exclude: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The gold labels' likely errors (`labelq.labelscreen`, on the model's own probabilities),
    reported with the first few, and left out of the fit when `exclude`."""
    probs = softmax(z, axis=1)
    issues = labelscreen.label_issues(probs, y, spec.label_names)
    report = {
        "count": len(issues),
        "of": len(y),
        "excluded": exclude and bool(issues),
        "examples": [
            {"item": names[i.index], **i.model_dump(exclude={"index"})}
            for i in issues[:SCREEN_EXAMPLES]
        ],
    }
    if exclude and issues:
        keep = np.ones(len(y), dtype=bool)
        keep[[i.index for i in issues]] = False
        z, y = z[keep], y[keep]
    return z, y, report


def _fit(ctx: Ctx, scorer_for: ScorerFor, calibration_id: int) -> None:
    with ctx.reads() as s:
        row = calibration_rows.get_calibration(s, calibration_id)
        if row.status != CalibrationStatus.fitting:
            return
        spec = spec_of(classifier_by_id(s, row.classifier_id))
        request = dict(row.fitted_on)
        method = row.method
    calibrator = calibration.make(method, **dict(request.get("options") or {}))
    z = np.empty((0, len(spec.label_names)))
    y: np.ndarray | None = None
    screened: dict[str, Any] | None = None
    if request.get("job_id"):
        z_labelled, y, z_scored, names = _scores(
            ctx, request["job_id"], spec, every_scored=not calibrator.needs_labels
        )
        if y is not None:  # screened before the fit, excluded if asked
            z_labelled, y, screened = _screen(
                z_labelled, y, names, spec, bool(request.get("exclude_label_issues"))
            )
        # Label-free methods fit on every scored item when none is labelled (and report no
        # held-out metrics).
        z = z_labelled if y is not None else z_scored
    fingerprints: list[str] = []  # the engines whose scores it is fitted on
    if request.get("job_id"):
        with ctx.reads() as s:
            fingerprints = chunk_rows.fingerprints_of(s, request["job_id"])
    content_free = None
    if isinstance(calibrator, calibration.ContextualCalibration):
        scorer = scorer_for(request["model"])
        content_free = content_free_log_probs(scorer, spec, calibrator.inputs)
        if scorer.fingerprint and scorer.fingerprint not in fingerprints:
            fingerprints.append(scorer.fingerprint)
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
        labels=spec.label_names,
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
                "fingerprints": fingerprints,
                # What its own data looks like under it: the label-free estimate's validity
                # compares traffic with this, whatever becomes of the job's rows.
                "reference": estimation.reference(calibrator, z, spec.label_names),
                "label_issues": screened,
            },
        )
        if request.get("activate"):
            calibration_rows.activate(s, row)
