"""/v1/pipelines: scheduled classification pipelines and their runs."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request, Response

from api.deps import Piping, Reading, StateDep
from api.errors import capped_body
from labelq.errors import InputError
from service import pipelines
from service.pipelines import PipelineOut, RunOut
from service.webhooks import DeliveryOut

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])

JSON_OBJECT = {
    "requestBody": {
        "content": {"application/json": {"schema": {"type": "object"}}},
        "required": True,
    }
}


async def _object(request: Request, st: StateDep) -> dict[str, Any]:
    """A JSON object body of at most LABELQ_MAX_SPEC_BYTES."""
    body = await capped_body(request, st.settings.max_spec_bytes, "LABELQ_MAX_SPEC_BYTES")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON body: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InputError("send a JSON object", field="body")
    return data


@router.post("", status_code=201, response_model=PipelineOut, openapi_extra=JSON_OBJECT)
async def create(request: Request, st: StateDep, call: Piping) -> PipelineOut:
    """A pipeline (the YAML shape as JSON), naming the operator's connections and roots.
    Checked now: schedule, classifier, source columns or folder, the sink's connection or
    folder; a problem is a 4xx naming the field. Needs the `pipelines` scope."""
    return await call(pipelines.create, await _object(request, st))


@router.get("", response_model=list[PipelineOut])
async def list_pipelines(call: Reading) -> list[PipelineOut]:
    return await call(pipelines.list_all)


@router.get("/{name}", response_model=PipelineOut)
async def get(name: str, call: Reading) -> PipelineOut:
    return await call(pipelines.get, name)


@router.patch("/{name}", response_model=PipelineOut, openapi_extra=JSON_OBJECT)
async def update(
    name: str,
    request: Request,
    st: StateDep,
    call: Piping,
    watermark: pipelines.WatermarkChoice | None = Query(
        None,
        description="with a new source or sink, once the pipeline has read rows: keep its "
        "position, or reset it (the new source is read from its start)",
    ),
) -> PipelineOut:
    """Change fields (e.g. `{"enabled": false}`); effective at the next tick. A run going on
    finishes as it started (its own source and sink) and leaves the watermark as set here."""
    return await call(pipelines.update, name, await _object(request, st), watermark)


@router.put("/{name}/watermark", response_model=RunOut)
async def set_watermark(name: str, position: pipelines.WatermarkIn, call: Piping) -> RunOut:
    """Set the position the next run reads after (`{"order": 1200}`, `{"order":
    "2026-12-01T00:00:00+00:00", "type": "datetime"}`; `{"order": null}` clears it),
    recorded as a run with trigger `watermark`."""
    return await call(pipelines.set_watermark, name, position)


@router.delete("/{name}", status_code=204)
async def delete(name: str, call: Piping) -> Response:
    await call(pipelines.delete, name)
    return Response(status_code=204)


@router.post("/{name}/run", status_code=202, response_model=RunOut)
async def run_now(name: str, call: Piping) -> RunOut:
    """Start a run now (skipped, and recorded so, if one is still going)."""
    return await call(pipelines.start_run, name, trigger="manual")


@router.get("/{name}/runs", response_model=list[RunOut])
async def runs(name: str, call: Reading, limit: int = Query(50, ge=1, le=500)) -> list[RunOut]:
    """Newest first."""
    return await call(pipelines.runs, name, limit)


@router.get("/{name}/webhooks", response_model=list[DeliveryOut])
async def pipeline_webhooks(name: str, call: Reading) -> list[DeliveryOut]:
    return await call(pipelines.webhooks_of, name)
