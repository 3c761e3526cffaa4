"""Classifiers: immutable, versioned specs."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from db import classifiers as classifier_rows
from labelq.errors import SpecError
from labelq.spec import ClassifierSpec, check_template, loads_spec
from service.context import Ctx


class ClassifierCreated(BaseModel):
    name: str
    version: int
    created: bool = Field(description="False when this exact spec already was that version.")
    created_at: datetime


class ClassifierVersion(BaseModel):
    version: int
    created_at: datetime
    spec_hash: str


class ClassifierSummary(BaseModel):
    name: str
    latest_version: int
    created_at: datetime


class ClassifierDetail(BaseModel):
    name: str
    latest: dict[str, Any] = Field(description="The latest version's spec.")
    latest_version: int
    versions: list[ClassifierVersion]


def create(ctx: Ctx, body: bytes, format: Literal["yaml", "json"]) -> ClassifierCreated:
    """A spec sent as JSON or YAML text (parsed here, off the event loop: YAML with the safe
    loader, no aliases, a bounded number of nodes), stored as `store` does."""
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        raise SpecError("empty body: send a classifier spec as JSON or YAML")
    return store(ctx, loads_spec(text, format=format))


def store(ctx: Ctx, spec: ClassifierSpec) -> ClassifierCreated:
    """A changed spec under a name is a new version of the caller's classifier; the same spec
    returns its version. Its model must be one the service serves, and its template must
    render in the sandbox."""
    ctx.settings.resolve_model(spec.model)
    check_template(spec)
    with ctx.tx() as s:
        row, created = classifier_rows.store_version(s, spec, tenant=ctx.owner)
        return ClassifierCreated(
            name=row.name, version=row.version, created=created, created_at=row.created_at
        )


def latest(ctx: Ctx) -> list[ClassifierSummary]:
    with ctx.reads() as s:
        return [
            ClassifierSummary(name=c.name, latest_version=c.version, created_at=c.created_at)
            for c in classifier_rows.latest_classifiers(s, tenant=ctx.owner)
        ]


def detail(ctx: Ctx, name: str) -> ClassifierDetail:
    with ctx.reads() as s:
        versions = classifier_rows.classifier_versions(s, name, tenant=ctx.owner)
    return ClassifierDetail(
        name=name,
        latest=versions[-1].spec,
        latest_version=versions[-1].version,
        versions=[
            ClassifierVersion(version=v.version, created_at=v.created_at, spec_hash=v.spec_hash)
            for v in versions
        ],
    )


class ClassifierVersionDetail(BaseModel):
    name: str
    version: int
    spec: dict[str, Any]
    spec_hash: str
    created_at: datetime


def version(ctx: Ctx, name: str, number: int) -> ClassifierVersionDetail:
    with ctx.reads() as s:
        row = classifier_rows.get_classifier(s, name, number, tenant=ctx.owner)
    return ClassifierVersionDetail(
        name=row.name,
        version=row.version,
        spec=row.spec,
        spec_hash=row.spec_hash,
        created_at=row.created_at,
    )
