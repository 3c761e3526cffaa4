"""/v1/pipelines: scheduled classification pipelines and their runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Response

from api.deps import DbDep, Reader, StateDep, Submitter
from service import pipelines
from service.pipelines import PipelineOut, RunOut
from service.webhooks import DeliveryOut

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.post("", status_code=201, response_model=PipelineOut)
async def create(db: DbDep, who: Submitter, body: dict[str, Any] = Body(...)) -> PipelineOut:
    """A pipeline (the YAML shape as JSON). Checked now: schedule, classifier, source columns
    or folder, sink URL; a problem is a 4xx naming the field."""
    return await db(pipelines.create, body, who.tenant)


@router.get("", response_model=list[PipelineOut])
async def list_pipelines(db: DbDep, who: Reader) -> list[PipelineOut]:
    return await db(pipelines.list_all, who.tenant)


@router.get("/{name}", response_model=PipelineOut)
async def get(name: str, db: DbDep, who: Reader) -> PipelineOut:
    return await db(pipelines.get, name, who.tenant)


@router.patch("/{name}", response_model=PipelineOut)
async def update(
    name: str, db: DbDep, who: Submitter, body: dict[str, Any] = Body(...)
) -> PipelineOut:
    """Change fields (e.g. `{"enabled": false}`); effective at the next tick."""
    return await db(pipelines.update, name, body, who.tenant)


@router.delete("/{name}", status_code=204)
async def delete(name: str, db: DbDep, who: Submitter) -> Response:
    await db(pipelines.delete, name, who.tenant)
    return Response(status_code=204)


@router.post("/{name}/run", status_code=202, response_model=RunOut)
def run_now(name: str, st: StateDep, who: Submitter) -> RunOut:
    """Start a run now (skipped, and recorded so, if one is still going)."""
    return pipelines.start_run(
        st.factory, st.dispatcher, st.settings, name, trigger="manual", tenant=who.tenant
    )


@router.get("/{name}/runs", response_model=list[RunOut])
async def runs(
    name: str, db: DbDep, who: Reader, limit: int = Query(50, ge=1, le=500)
) -> list[RunOut]:
    """Newest first."""
    return await db(pipelines.runs, name, limit, who.tenant)


@router.get("/{name}/webhooks", response_model=list[DeliveryOut])
async def pipeline_webhooks(name: str, db: DbDep, who: Reader) -> list[DeliveryOut]:
    return await db(pipelines.webhooks_of, name, who.tenant)
