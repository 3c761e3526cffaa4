"""/v1/classifiers/{name}/calibrations: fit (a worker task), list, activate."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from api.deps import AppState, require_key, state
from api.schemas import CalibrationCreate, CalibrationOut
from db import repo
from db.models import Calibration, Classifier
from labelq import calibration as methods
from labelq.errors import InputError, NotFound

router = APIRouter(
    prefix="/v1/classifiers/{name}/calibrations",
    tags=["calibrations"],
    dependencies=[Depends(require_key)],
)


def _out(row: Calibration, classifier: Classifier) -> CalibrationOut:
    return CalibrationOut(
        id=row.id,
        classifier=classifier.name,
        version=classifier.version,
        method=row.method,
        status=row.status,
        active=row.active,
        params=row.params,
        fitted_on=row.fitted_on,
        metrics=row.metrics,
        error=row.error,
        created_at=row.created_at,
    )


@router.post("", status_code=202, response_model=CalibrationOut)
async def fit(name: str, body: CalibrationCreate, st: AppState = Depends(state)) -> CalibrationOut:
    """Fit a calibration as a worker task on the gold-labelled results of `job_id` (held-out
    share `holdout` measures it before and after). Poll the returned calibration's `status`."""
    if body.method not in methods.METHODS:
        raise InputError(
            f"unknown method {body.method!r}; one of {sorted(methods.METHODS)}", field="method"
        )
    methods.make(body.method, **body.options)  # options are checked before anything is stored

    def create() -> tuple[Calibration, Classifier, str]:
        with st.factory() as s:
            if body.job_id:
                job = repo.get_job(s, body.job_id)
                classifier = s.get_one(Classifier, job.classifier_id)
                if classifier.name != name:
                    raise InputError(
                        f"job {body.job_id} ran classifier {classifier.name!r}", field="job_id"
                    )
                if body.version is not None and body.version != classifier.version:
                    raise InputError(
                        f"job {body.job_id} ran version {classifier.version}", field="version"
                    )
                model, queue = job.model, job.queue
            else:
                if methods.METHODS[body.method].needs_labels or body.method == "batch":
                    raise InputError(f"{body.method} is fitted on a job's results", field="job_id")
                classifier = repo.get_classifier(s, name, body.version)
                model = repo.spec_of(classifier).model or st.settings.model or ""
                if not model:
                    raise InputError("no model to score content-free inputs", field="classifier")
                queue = repo.queue_for(model)
        fitted_on = {
            "job_id": body.job_id,
            "holdout": body.holdout,
            "seed": body.seed,
            "bins": body.bins,
            "options": body.options,
            "model": model,
            "activate": body.activate,
        }
        row = repo.create_calibration(st.factory, classifier.id, body.method, fitted_on)
        return row, classifier, queue

    row, classifier, queue = await run_in_threadpool(create)
    await run_in_threadpool(st.dispatcher.dispatch_fit, row.id, queue)
    return _out(row, classifier)


@router.get("", response_model=list[CalibrationOut])
def list_calibrations(
    name: str, version: int | None = Query(None), st: AppState = Depends(state)
) -> list[CalibrationOut]:
    with st.factory() as s:
        classifiers = {c.id: c for c in repo.classifier_versions(s, name)}
        rows = s.query(Calibration).filter(Calibration.classifier_id.in_(classifiers))
        if version is not None:
            rows = rows.filter(
                Calibration.classifier_id.in_(
                    [c.id for c in classifiers.values() if c.version == version]
                )
            )
        return [_out(r, classifiers[r.classifier_id]) for r in rows.order_by(Calibration.id)]


@router.get("/{calibration_id}", response_model=CalibrationOut)
def get_calibration(
    name: str, calibration_id: int, st: AppState = Depends(state)
) -> CalibrationOut:
    with st.factory() as s:
        row = repo.get_calibration(s, calibration_id)
        classifier = s.get_one(Classifier, row.classifier_id)
        if classifier.name != name:
            raise NotFound(f"calibration {calibration_id} is not of {name!r}", field="calibration")
        return _out(row, classifier)


@router.post("/{calibration_id}/activate", response_model=CalibrationOut)
def activate(name: str, calibration_id: int, st: AppState = Depends(state)) -> CalibrationOut:
    """Make this the classifier version's active calibration (one transaction). New results are
    written under it; past results can be read under it with `?calibration=active`."""
    with st.factory() as s:
        row = repo.get_calibration(s, calibration_id)
        classifier = s.get_one(Classifier, row.classifier_id)
        if classifier.name != name:
            raise NotFound(f"calibration {calibration_id} is not of {name!r}", field="calibration")
    row = repo.activate_calibration(st.factory, classifier.id, calibration_id)
    return _out(row, classifier)
