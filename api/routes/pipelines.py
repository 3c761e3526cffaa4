"""/v1/pipelines: scheduled classification pipelines and their runs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, Response

from api.deps import Reader, SessionDep, StateDep, Submitter
from service import pipelines, webhooks
from service.pipelines import PipelineOut, RunOut
from service.webhooks import DeliveryOut

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.post("", status_code=201, response_model=PipelineOut)
def create(s: SessionDep, who: Submitter, body: dict[str, Any] = Body(...)) -> PipelineOut:
    """A pipeline (the YAML shape as JSON). Checked now: schedule, classifier, source columns
    or folder, sink URL; a problem is a 4xx naming the field."""
    return pipelines.create(s, body, who.tenant)


@router.get("", response_model=list[PipelineOut])
def list_pipelines(s: SessionDep, who: Reader) -> list[PipelineOut]:
    return pipelines.list_all(s, who.tenant)


@router.get("/{name}", response_model=PipelineOut)
def get(name: str, s: SessionDep, who: Reader) -> PipelineOut:
    return pipelines.get(s, name, who.tenant)


@router.patch("/{name}", response_model=PipelineOut)
def update(
    name: str, s: SessionDep, who: Submitter, body: dict[str, Any] = Body(...)
) -> PipelineOut:
    """Change fields (e.g. `{"enabled": false}`); effective at the next tick."""
    return pipelines.update(s, name, body, who.tenant)


@router.delete("/{name}", status_code=204)
def delete(name: str, s: SessionDep, who: Submitter) -> Response:
    pipelines.delete(s, name, who.tenant)
    return Response(status_code=204)


@router.post("/{name}/run", status_code=202, response_model=RunOut)
def run_now(name: str, st: StateDep, who: Submitter) -> RunOut:
    """Start a run now (skipped, and recorded so, if one is still going)."""
    return pipelines.start_run(
        st.factory, st.dispatcher, st.settings, name, trigger="manual", tenant=who.tenant
    )


@router.get("/{name}/runs", response_model=list[RunOut])
def runs(
    name: str, s: SessionDep, who: Reader, limit: int = Query(50, ge=1, le=500)
) -> list[RunOut]:
    """Newest first."""
    return pipelines.runs(s, name, limit, who.tenant)


@router.get("/{name}/webhooks", response_model=list[DeliveryOut])
def pipeline_webhooks(name: str, s: SessionDep, who: Reader) -> list[DeliveryOut]:
    run_ids = [r.id for r in pipelines.runs(s, name, 500, who.tenant)]
    return webhooks.deliveries(s, run_ids=run_ids)
