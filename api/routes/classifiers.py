"""/v1/classifiers: immutable, versioned classifier specs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import AppState, require_key, state
from api.schemas import ClassifierCreated, ClassifierDetail, ClassifierSummary, ClassifierVersion
from db import repo
from labelq.errors import SpecError
from labelq.spec import loads_spec

router = APIRouter(
    prefix="/v1/classifiers", tags=["classifiers"], dependencies=[Depends(require_key)]
)


@router.post(
    "",
    status_code=201,
    response_model=ClassifierCreated,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "application/yaml": {"schema": {"type": "string"}},
            },
            "required": True,
        }
    },
)
async def create_classifier(
    request: Request, response: Response, st: AppState = Depends(state)
) -> ClassifierCreated:
    """Store a spec (JSON or YAML body). A new spec under an existing name is a new version; the
    same spec again returns its existing version with 200."""
    body = (await request.body()).decode("utf-8", errors="replace")
    if not body.strip():
        raise SpecError("empty body: send a classifier spec as JSON or YAML")
    yaml_body = "yaml" in request.headers.get("content-type", "")
    spec = loads_spec(body, format="yaml" if yaml_body else "json")
    row, created = await run_in_threadpool(repo.create_classifier, st.factory, spec)
    if not created:
        response.status_code = 200
    return ClassifierCreated(
        name=row.name, version=row.version, created=created, created_at=row.created_at
    )


@router.get("", response_model=list[ClassifierSummary])
def list_classifiers(st: AppState = Depends(state)) -> list[ClassifierSummary]:
    with st.factory() as s:
        return [
            ClassifierSummary(name=c.name, latest_version=c.version, created_at=c.created_at)
            for c in repo.latest_classifiers(s)
        ]


@router.get("/{name}", response_model=ClassifierDetail)
def get_classifier(name: str, st: AppState = Depends(state)) -> ClassifierDetail:
    with st.factory() as s:
        versions = repo.classifier_versions(s, name)
        latest: dict[str, Any] = versions[-1].spec
        return ClassifierDetail(
            name=name,
            latest=latest,
            latest_version=versions[-1].version,
            versions=[
                ClassifierVersion(version=v.version, created_at=v.created_at, spec_hash=v.spec_hash)
                for v in versions
            ],
        )
