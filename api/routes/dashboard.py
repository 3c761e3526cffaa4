"""The calibration dashboard: queries under /v1/classifiers/{name}/..., the page at /dashboard.

Every query takes the same filters: `version`, `calibration` (stored | none | active | an id),
`from`/`to` (ISO times; a time without a zone is UTC), `job` and `fingerprint` (the engine)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Annotated, cast, get_args

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from api.deps import Reading
from labelq.dashboard import Bucket
from labelq.errors import InputError
from labelq.metrics import Binning
from service import dashboard
from service.dashboard import TimeMetric

router = APIRouter(prefix="/v1/classifiers/{name}", tags=["dashboard"])
page_router = APIRouter(tags=["dashboard"])

Bins = Annotated[int, Query(ge=1, le=200, description="Number of confidence bins.")]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def filters_for(default_calibration: str) -> Callable[..., dashboard.Query]:
    """The filters every query takes, with the calibration it reads under by default."""

    def filters(
        version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
        calibration: Annotated[
            str, Query(max_length=20, description="stored, none, active or a calibration id")
        ] = default_calibration,
        from_: Annotated[
            datetime | None, Query(alias="from", description="scored at or after")
        ] = None,
        to: Annotated[datetime | None, Query(description="scored before")] = None,
        job: Annotated[str | None, Query(max_length=36)] = None,
        fingerprint: Annotated[
            str | None, Query(max_length=32, description="only items scored by this engine")
        ] = None,
    ) -> dashboard.Query:
        return dashboard.Query(version, calibration, _utc(from_), _utc(to), job, fingerprint)

    return filters


Filters = Annotated[dashboard.Query, Depends(filters_for("stored"))]
# The label-free estimate relies on a calibration: the active one unless another is asked for.
ActiveFilters = Annotated[dashboard.Query, Depends(filters_for("active"))]


def _floats(text: str, field: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{field} must be numbers separated by commas", field=field) from None


@router.get("/reliability", response_model=dashboard.Reliability)
async def reliability(
    name: str,
    q: Filters,
    call: Reading,
    bins: Bins = 15,
    binning: Binning = "width",
) -> dashboard.Reliability:
    """Reliability diagram over gold-labelled items: per bin its count, accuracy and mean
    confidence, with ECE, MCE, Brier and accuracy (the definitions of `calibrate eval`)."""
    return await call(dashboard.reliability, name, q, bins, binning)


@router.get("/estimated-performance", response_model=dashboard.EstimatedPerformance)
async def estimated_performance(
    name: str,
    q: ActiveFilters,
    call: Reading,
    level: Annotated[float, Query(description="the interval's confidence level")] = 0.95,
) -> dashboard.EstimatedPerformance:
    """Accuracy without labels: the expected accuracy of the scored items in scope from their
    calibrated confidences (their mean), an interval at `level` (the sampling part, plus how
    far the calibration is off on its own held-out data), `n`, the calibration it relies on,
    the measured accuracy of the gold-labelled ones among them, and a validity signal: how far
    this traffic's confidence and predicted-label distributions are from the calibration set's
    (PSI; a large shift marks the estimate as not to be relied on). The same filters as the
    other queries, under the active calibration unless another is asked for."""
    return await call(dashboard.estimated_performance, name, q, level)


@router.get("/to-label", response_model=dashboard.ToLabel)
async def to_label(
    name: str,
    q: Filters,
    call: Reading,
    n: Annotated[int, Query(description="how many items")] = 100,
) -> dashboard.ToLabel:
    """What to label next: the `n` scored items without a gold label whose labels would most
    help a refit, the least confident first, taken in turn from each predicted label, with
    their input (the same filters as the other queries; confidences as stored)."""
    return await call(dashboard.to_label, name, q, n)


@router.get("/engines", response_model=dashboard.EngineSplits)
async def engines(name: str, q: Filters, call: Reading) -> dashboard.EngineSplits:
    """The scored items in scope split by the engine that scored them (its fingerprint: model
    files, dtype, engine and labelq versions, strategy): count, mean confidence and accuracy
    where labelled. Every query takes `fingerprint=` to keep one engine's items."""
    return await call(dashboard.by_engine, name, q)


@router.get("/timeseries", response_model=dashboard.Timeseries)
async def timeseries(
    name: str,
    q: Filters,
    call: Reading,
    bucket: Bucket = "day",
    metrics: str = "volume,accuracy,ece,brier,mean_confidence,coverage",
    bins: Bins = 15,
) -> dashboard.Timeseries:
    """One row per hour or day. `accuracy`, `ece` and `brier` are over the bucket's
    gold-labelled items (`labelled`; None without any); `coverage` is the share of the
    bucket's scored items that carry a gold label. `estimated_accuracy` (with
    `estimated_low`/`estimated_high`, 95%) is the accuracy estimated from the bucket's
    confidences without labels (see `estimated-performance`), beside `accuracy` where labels
    exist."""
    known = get_args(TimeMetric)
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in known]
    if unknown or not wanted:
        raise InputError(
            f"unknown metric {unknown[0]!r}; metrics are {', '.join(known)}"
            if unknown
            else "name at least one metric",
            field="metrics",
        )
    return await call(dashboard.timeseries, name, q, bucket, cast(list[TimeMetric], wanted), bins)


@router.get("/confidence-histogram", response_model=dashboard.Histogram)
async def confidence_histogram(
    name: str, q: Filters, call: Reading, bins: Bins = 20
) -> dashboard.Histogram:
    """Counts per equal-width confidence bin: correct, incorrect (gold-labelled) and
    unlabelled."""
    return await call(dashboard.confidence_histogram, name, q, bins)


@router.get("/confusion", response_model=dashboard.Confusion)
async def confusion(name: str, q: Filters, call: Reading) -> dashboard.Confusion:
    """Gold x predicted counts over gold-labelled items (rows gold, columns predicted)."""
    return await call(dashboard.confusion, name, q)


@router.get("/label-distribution", response_model=dashboard.LabelDistribution)
async def label_distribution(
    name: str,
    q: Filters,
    call: Reading,
    bucket: Bucket = "day",
    reference_from: datetime | None = None,
    reference_to: datetime | None = None,
) -> dashboard.LabelDistribution:
    """Predicted-label shares per bucket and their drift (population stability index,
    Jensen-Shannon divergence in bits) against a reference window, by default the first
    bucket."""
    return await call(
        dashboard.label_distribution, name, q, bucket, _utc(reference_from), _utc(reference_to)
    )


@router.get("/selective", response_model=dashboard.Selective)
async def selective(
    name: str,
    q: Filters,
    call: Reading,
    thresholds: str = "0.5,0.6,0.7,0.8,0.9,0.95,0.99",
    target_accuracy: Annotated[float | None, Query(gt=0, le=1)] = None,
) -> dashboard.Selective:
    """Coverage and accuracy of the gold-labelled items with confidence >= each threshold
    (the risk-coverage curve), and the lowest threshold on a 0.001 grid whose accuracy reaches
    `target_accuracy`."""
    values = _floats(thresholds, "thresholds")
    return await call(dashboard.selective, name, q, values, target_accuracy)


@router.get("/compare", response_model=dashboard.Compared)
async def compare(
    name: str,
    q: Filters,
    call: Reading,
    compare: str = "none,active",
    bins: Bins = 15,
    binning: Binning = "width",
) -> dashboard.Compared:
    """The reliability and metrics of each named calibration, side by side."""
    choices = [c.strip() for c in compare.split(",") if c.strip()]
    return await call(dashboard.compare, name, q, choices, bins, binning)


class WhoAmI(BaseModel):
    tenant: str
    scopes: list[str]
    key_id: int | None


@page_router.get("/v1/me", response_model=WhoAmI)
async def me(call: Reading) -> WhoAmI:
    """The tenant and scopes of the key asking (the dashboard shows admin actions by them)."""
    who = call.who
    return WhoAmI(tenant=who.tenant, scopes=sorted(who.scopes), key_id=who.key_id)


STATIC = resources.files("api") / "static"


@page_router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
def page() -> HTMLResponse:
    """The dashboard page. It asks for an API key in the browser when the service has keys."""
    return HTMLResponse((STATIC / "dashboard.html").read_text(encoding="utf-8"))
