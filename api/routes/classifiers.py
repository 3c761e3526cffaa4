"""/v1/classifiers: immutable, versioned classifier specs, per tenant."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import Reading, RowId, StateDep, Submitting
from api.errors import capped_body
from service import classifiers
from service.classifiers import (
    ClassifierCreated,
    ClassifierDetail,
    ClassifierSummary,
    ClassifierVersionDetail,
)

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"])


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
    request: Request, response: Response, st: StateDep, call: Submitting
) -> ClassifierCreated:
    """Store a spec (JSON or YAML body, at most LABELQ_MAX_SPEC_BYTES). A new spec under an
    existing name is a new version; the same spec again returns its existing version with 200.
    Its model must be one the service serves; its template is rendered once in the sandbox."""
    limit = st.settings.max_spec_bytes
    body = await capped_body(request, limit, "LABELQ_MAX_SPEC_BYTES")
    yaml_body = "yaml" in request.headers.get("content-type", "")
    created = await call(classifiers.create, body, "yaml" if yaml_body else "json")
    if not created.created:
        response.status_code = 200
    return created


@router.get("", response_model=list[ClassifierSummary])
async def list_classifiers(call: Reading) -> list[ClassifierSummary]:
    return await call(classifiers.latest)


@router.get("/{name}", response_model=ClassifierDetail)
async def get_classifier(name: str, call: Reading) -> ClassifierDetail:
    return await call(classifiers.detail, name)


@router.get("/{name}/versions/{version}", response_model=ClassifierVersionDetail)
async def get_version(name: str, version: RowId, call: Reading) -> ClassifierVersionDetail:
    return await call(classifiers.version, name, version)
