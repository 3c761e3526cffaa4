"""Request and response bodies of the HTTP API that are the API's own; the use cases' models
(job status, results, calibrations) come from `service`. And how the routes pollers hit most
answer: bodies encoded once, without FastAPI's second pass."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response
from pydantic import BaseModel, Field

from service.jobs import JobStatus
from service.results import Page

JSON = "application/json"


class JobCreate(BaseModel):
    classifier: str
    version: int | None = None
    items: list[Any] = Field(description="Objects with an optional custom_id and the fields.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = Field(None, description="POSTed a signed event when the job ends")
    expires_after: float | None = Field(
        None, gt=0, description="seconds to end by, else `expired` (default: the service's)"
    )


class JobList(BaseModel):
    data: list[JobStatus]


# A route that returns a model has FastAPI validate it again against its response_model, dump
# it to Python objects and encode those with the json module; for a page of 50 results that
# was 0.68 ms of CPU, three times what reading the page cost (timed on one page in a loop:
# 0.04 ms with orjson, 0.11 ms with pydantic's own encoder). These routes hand back the bytes
# instead; their response_model still documents them.


def model_json(model: BaseModel, status_code: int = 200) -> Response:
    """A model validated where it was built, encoded once by pydantic's serializer."""
    return Response(model.__pydantic_serializer__.to_json(model), status_code, media_type=JSON)


def page_json(page: Page) -> Response:
    """A results page: rows of plain JSON values (numpy floats where a calibration recomputed
    them) or stored JSON text, which orjson encodes fastest; NaN becomes null, as pydantic
    writes it."""
    body = {"data": page.data, "next_cursor": page.next_cursor}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)
