"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from db.models import Classifier, Job


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


class JobCreate(BaseModel):
    classifier: str
    version: int | None = None
    items: list[Any] = Field(description="Objects with an optional custom_id and the fields.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: str
    classifier: str
    version: int
    model: str
    state: str
    total: int
    succeeded: int
    failed: int
    cancelled: int
    progress: float = Field(description="Finished items (succeeded, failed) over total.")
    metadata: dict[str, Any]
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job, classifier: Classifier, cancelled: int = 0) -> JobOut:
        done = job.succeeded + job.failed
        return cls(
            id=job.id,
            classifier=classifier.name,
            version=classifier.version,
            model=job.model,
            state=job.state,
            total=job.total,
            succeeded=job.succeeded,
            failed=job.failed,
            cancelled=cancelled,
            progress=(done / job.total) if job.total else (1.0 if job.finished_at else 0.0),
            metadata=job.metadata_,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
        )


class JobList(BaseModel):
    data: list[JobOut]


class ResultsPage(BaseModel):
    data: list[dict[str, Any]]
    next_cursor: str | None


class LabelsReport(BaseModel):
    accepted: int
    rejected: list[dict[str, Any]] = Field(description="Each with line/custom_id and the error.")


class JobMetrics(BaseModel):
    calibration: dict[str, Any] | None
    metrics: dict[str, Any]
    reliability: list[dict[str, Any]]
    set_coverage: float | None = None
    mean_set_size: float | None = None


class CalibrationCreate(BaseModel):
    method: str = Field(
        description="temperature | vector | platt | isotonic | contextual | batch | conformal"
    )
    job_id: str | None = Field(None, description="job whose gold-labelled results to fit on")
    version: int | None = Field(None, description="classifier version; default: the job's")
    holdout: float = Field(0.2, ge=0, lt=1)
    seed: int = 0
    bins: int = Field(15, ge=1, le=1000)
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="method options: alpha, score (conformal); inputs (contextual) ...",
    )
    activate: bool = Field(False, description="activate once fitted (embedded: at once)")


class CalibrationOut(BaseModel):
    id: int
    classifier: str
    version: int
    method: str
    status: str
    active: bool
    params: dict[str, Any]
    fitted_on: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    created_at: datetime
