"""Request and response bodies of the HTTP API that are the API's own; the use cases' models
(job status, results, calibrations) come from `service`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.jobs import JobStatus


class JobCreate(BaseModel):
    classifier: str
    version: int | None = None
    items: list[Any] = Field(description="Objects with an optional custom_id and the fields.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    webhook_url: str | None = Field(None, description="POSTed a signed event when the job ends")


class JobList(BaseModel):
    data: list[JobStatus]
