"""/v1/pipelines: scheduled classification pipelines and their runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Response

from api.deps import Reading, Submitting
from service import pipelines
from service.pipelines import PipelineOut, RunOut
from service.webhooks import DeliveryOut

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.post("", status_code=201, response_model=PipelineOut)
async def create(call: Submitting, body: dict[str, Any] = Body(...)) -> PipelineOut:
    """A pipeline (the YAML shape as JSON). Checked now: schedule, classifier, source columns
    or folder, sink URL; a problem is a 4xx naming the field."""
    return await call(pipelines.create, body)


@router.get("", response_model=list[PipelineOut])
async def list_pipelines(call: Reading) -> list[PipelineOut]:
    return await call(pipelines.list_all)


@router.get("/{name}", response_model=PipelineOut)
async def get(name: str, call: Reading) -> PipelineOut:
    return await call(pipelines.get, name)


@router.patch("/{name}", response_model=PipelineOut)
async def update(name: str, call: Submitting, body: dict[str, Any] = Body(...)) -> PipelineOut:
    """Change fields (e.g. `{"enabled": false}`); effective at the next tick."""
    return await call(pipelines.update, name, body)


@router.delete("/{name}", status_code=204)
async def delete(name: str, call: Submitting) -> Response:
    await call(pipelines.delete, name)
    return Response(status_code=204)


@router.post("/{name}/run", status_code=202, response_model=RunOut)
async def run_now(name: str, call: Submitting) -> RunOut:
    """Start a run now (skipped, and recorded so, if one is still going)."""
    return await call(pipelines.start_run, name, trigger="manual")


@router.get("/{name}/runs", response_model=list[RunOut])
async def runs(name: str, call: Reading, limit: int = Query(50, ge=1, le=500)) -> list[RunOut]:
    """Newest first."""
    return await call(pipelines.runs, name, limit)


@router.get("/{name}/webhooks", response_model=list[DeliveryOut])
async def pipeline_webhooks(name: str, call: Reading) -> list[DeliveryOut]:
    return await call(pipelines.webhooks_of, name)
