"""Drift monitors: /v1/classifiers/{name}/drift (thresholds, window, alarm receiver; the last
check). Set with the `calibrate` scope, read with `read`."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.deps import Calibrating, Reading
from service import drift

router = APIRouter(prefix="/v1/classifiers/{name}/drift", tags=["drift"])


@router.put("", response_model=drift.MonitorOut)
async def put_monitor(name: str, body: drift.MonitorIn, call: Calibrating) -> drift.MonitorOut:
    """Watch the classifier (every version) for drift: every LABELQ_DRIFT_EVERY seconds the
    reconciler reads the last `window_hours` of its traffic under the active calibration and
    raises a signal past its threshold (estimated accuracy drop against the calibration's
    held-out accuracy, predicted-label PSI, confidence PSI, mean-confidence shift, an estimate
    not to be relied on). A signal that rises or falls back sends `classifier.drift` or
    `classifier.drift_cleared` to `webhook_url`, signed as every webhook."""
    return await call(drift.put, name, body)


@router.get("", response_model=drift.MonitorOut)
async def get_monitor(name: str, call: Reading) -> drift.MonitorOut:
    """The monitor and what its last check found (`state.signals`: value, threshold, raised)."""
    return await call(drift.get, name)


@router.delete("", status_code=204)
async def delete_monitor(name: str, call: Calibrating) -> Response:
    await call(drift.delete, name)
    return Response(status_code=204)
