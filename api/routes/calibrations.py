"""/v1/classifiers/{name}/calibrations: fit (a worker task), list, activate."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.deps import Calibrator, Reader, RowId, SessionDep, StateDep
from service import calibrations
from service.calibrations import CalibrationOut, CalibrationRequest

router = APIRouter(prefix="/v1/classifiers/{name}/calibrations", tags=["calibrations"])


@router.post("", status_code=202, response_model=CalibrationOut)
def fit(
    name: str, body: CalibrationRequest, s: SessionDep, st: StateDep, who: Calibrator
) -> CalibrationOut:
    """Fit a calibration as a worker task on the gold-labelled results of `job_id` (held-out
    share `holdout` measures it before and after). Poll the returned calibration's `status`."""
    return calibrations.request_fit(s, st.dispatcher, st.settings, name, body, who.tenant)


@router.get("", response_model=list[CalibrationOut])
def list_calibrations(
    name: str, s: SessionDep, who: Reader, version: int | None = Query(None)
) -> list[CalibrationOut]:
    return calibrations.list_for(s, name, version, who.tenant)


@router.get("/{calibration_id}", response_model=CalibrationOut)
def get_calibration(name: str, calibration_id: RowId, s: SessionDep, who: Reader) -> CalibrationOut:
    return calibrations.get(s, name, calibration_id, who.tenant)


@router.post("/{calibration_id}/activate", response_model=CalibrationOut)
def activate(name: str, calibration_id: RowId, s: SessionDep, who: Calibrator) -> CalibrationOut:
    """Make this the classifier version's active calibration (one transaction). New results are
    written under it; past results can be read under it with `?calibration=active`."""
    return calibrations.activate(s, name, calibration_id, who.tenant)
