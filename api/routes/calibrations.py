"""/v1/classifiers/{name}/calibrations: fit (a worker task), list, activate."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api.deps import Calibrator, DbDep, Reader, RowId, StateDep
from service import calibrations
from service.calibrations import CalibrationOut, CalibrationRequest

router = APIRouter(prefix="/v1/classifiers/{name}/calibrations", tags=["calibrations"])


@router.post("", status_code=202, response_model=CalibrationOut)
async def fit(
    name: str, body: CalibrationRequest, db: DbDep, st: StateDep, who: Calibrator
) -> CalibrationOut:
    """Fit a calibration as a worker task on the gold-labelled results of `job_id` (held-out
    share `holdout` measures it before and after). Poll the returned calibration's `status`."""
    return await db(calibrations.request_fit, st.dispatcher, st.settings, name, body, who.tenant)


@router.get("", response_model=list[CalibrationOut])
async def list_calibrations(
    name: str, db: DbDep, who: Reader, version: int | None = Query(None)
) -> list[CalibrationOut]:
    return await db(calibrations.list_for, name, version, who.tenant)


@router.get("/{calibration_id}", response_model=CalibrationOut)
async def get_calibration(
    name: str, calibration_id: RowId, db: DbDep, who: Reader
) -> CalibrationOut:
    return await db(calibrations.get, name, calibration_id, who.tenant)


@router.post("/{calibration_id}/activate", response_model=CalibrationOut)
async def activate(name: str, calibration_id: RowId, db: DbDep, who: Calibrator) -> CalibrationOut:
    """Make this the classifier version's active calibration (one transaction). New results are
    written under it; past results can be read under it with `?calibration=active`."""
    return await db(calibrations.activate, name, calibration_id, who.tenant)
