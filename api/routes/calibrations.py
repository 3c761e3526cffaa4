"""/v1/classifiers/{name}/calibrations: fit (a worker task), list, activate."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.deps import Calibrating, Reading, RowId
from service import calibrations
from service.calibrations import CalibrationOut, CalibrationRequest

router = APIRouter(prefix="/v1/classifiers/{name}/calibrations", tags=["calibrations"])


@router.post("", status_code=202, response_model=CalibrationOut)
async def fit(name: str, body: CalibrationRequest, call: Calibrating) -> CalibrationOut:
    """Fit a calibration as a worker task on the gold-labelled results of `job_id` (held-out
    share `holdout` measures it before and after). Poll the returned calibration's `status`."""
    return await call(calibrations.request_fit, name, body)


@router.get("", response_model=list[CalibrationOut])
async def list_calibrations(
    name: str, call: Reading, version: int | None = Query(None)
) -> list[CalibrationOut]:
    return await call(calibrations.list_for, name, version)


@router.get("/{calibration_id}", response_model=CalibrationOut)
async def get_calibration(name: str, calibration_id: RowId, call: Reading) -> CalibrationOut:
    return await call(calibrations.get, name, calibration_id)


@router.post("/{calibration_id}/activate", response_model=CalibrationOut)
async def activate(name: str, calibration_id: RowId, call: Calibrating) -> CalibrationOut:
    """Make this the classifier version's active calibration (one transaction). New results are
    written under it; past results can be read under it with `?calibration=active`."""
    return await call(calibrations.activate, name, calibration_id)
