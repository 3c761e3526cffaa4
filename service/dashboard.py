"""Dashboard queries: how far a classifier's confidences can be trusted, over every stored result.

Each query reads the scored items of one classifier (a version, a job, a time window) under a
calibration: `stored` (each result as it was stored), `none`, `active` or a calibration id. When
every item in scope was stored under the calibration asked for, the query is aggregated in SQL.
Otherwise the results are recomputed from their raw label scores in one streamed pass, job by
job (a batch calibration's prior is its job's), and the answer says so in `basis`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from db import calibrations as calibration_rows
from db import dashboard as sums
from db import jobs as job_rows
from db.classifiers import classifier_versions, spec_of
from db.dashboard import Scope
from db.models import Calibration, Classifier
from labelq import dashboard as dash
from labelq import estimation as est
from labelq import labelscreen
from labelq.dashboard import Bucket
from labelq.errors import InputError, LabelqError
from labelq.metrics import Binning
from service.context import Ctx
from service.results import CALIBRATION_CHOICES, calibration_choice, check_ready, resolve_view

T = TypeVar("T")
STREAM_PAGE = 2000
MAX_THRESHOLDS = 200


@dataclass(frozen=True)
class Query:
    """The filters every dashboard query takes."""

    version: int | None = None
    calibration: str = "stored"
    start: datetime | None = None
    end: datetime | None = None
    job: str | None = None
    fingerprint: str | None = None  # only items scored by this engine

    def __post_init__(self) -> None:
        if self.start and self.end and self.start >= self.end:
            raise InputError("`from` must be before `to`", field="from")


class Basis(BaseModel):
    calibration: str = Field(description="The calibration the figures are under, as asked.")
    computed: Literal["sql", "stream"] = Field(
        description="`sql`: aggregated in the database from the stored readings; `stream`: "
        "results stored under other calibrations were recomputed in one pass."
    )
    note: str | None = None


@dataclass
class _Resolved:
    scope: Scope
    labels: list[str]
    # classifier row id -> the calibration asked for (None: uncalibrated); None: as stored
    wanted: dict[int, int | None] | None


def _resolve(ctx: Ctx, name: str, q: Query) -> _Resolved:
    with ctx.reads() as s:
        versions = classifier_versions(s, name, tenant=ctx.owner)
        if q.version is not None:
            versions = [v for v in versions if v.version == q.version]
            if not versions:
                raise InputError(f"classifier {name!r} has no version {q.version}", field="version")
        if q.job is not None:
            job = job_rows.get_job(s, q.job, tenant=ctx.tenant)
            versions = [v for v in versions if v.id == job.classifier_id]
            if not versions:
                raise InputError(f"job {q.job} is not a job of classifier {name!r}", field="job")
        found: dict[int, Calibration | None] = {}
        if q.calibration == "active":
            found = {v.id: calibration_rows.active_calibration(s, v.id) for v in versions}
        elif q.calibration not in ("stored", "none"):
            choice = calibration_choice(q.calibration, f"stored, {CALIBRATION_CHOICES}")
            row = calibration_rows.get_calibration(s, choice, {v.id for v in versions})
            found = {row.classifier_id: row}
        wanted = _wanted(q.calibration, versions, found)
    if wanted is not None and len(wanted) < len(versions):  # a calibration id: its version only
        versions = [v for v in versions if v.id in wanted]
    scope = Scope([v.id for v in versions], q.job, q.start, q.end, fingerprint=q.fingerprint)
    return _Resolved(scope, _labels(versions), wanted)


def _labels(versions: list[Classifier]) -> list[str]:
    """Label names of the versions in scope, the latest version's order first."""
    out: list[str] = []
    for v in sorted(versions, key=lambda v: -v.version):
        out += [label for label in spec_of(v).label_names if label not in out]
    return out


def _wanted(
    choice: str, versions: list[Classifier], found: dict[int, Calibration | None]
) -> dict[int, int | None] | None:
    """Classifier row id -> the calibration asked for (None: uncalibrated); None: as stored."""
    if choice == "stored":
        return None
    if choice == "none":
        return dict.fromkeys((v.id for v in versions), None)
    if choice != "active":
        for row in found.values():
            assert row is not None
            check_ready(row)
    return {version: row.id if row else None for version, row in found.items()}


def _stream(ctx: Ctx, r: _Resolved, choice: str) -> dash.Readings:
    """Every item in scope, recomputed under `choice`, job by job, page by page."""
    readings = dash.Readings()
    with ctx.reads() as s:
        jobs = sums.jobs_in(s, r.scope)
    for job_id in jobs:
        view = resolve_view(ctx, job_id, None if choice == "stored" else choice)
        after = 0
        while True:
            with ctx.reads() as s:
                page = sums.scored_items(s, r.scope, job_id, after, STREAM_PAGE)
            for item, row in zip(page, view.rows(page), strict=True):
                assert item.scored_at is not None
                readings.add(item.id, row, item.gold_label, item.scored_at)
            if len(page) < STREAM_PAGE:
                break
            after = page[-1].id
    return readings.in_id_order()


def _run(
    ctx: Ctx,
    name: str,
    q: Query,
    in_sql: sums.Aggregate[T],
    in_python: Callable[[dash.Readings], T],
    resolved: _Resolved | None = None,
) -> tuple[T, list[str], Basis]:
    r = resolved or _resolve(ctx, name, q)
    with ctx.snapshot() as s:
        archive = ctx.services.features.has(s, "archive")
        scope = sums.with_archive(s, r.scope, archive=archive)  # erased rows' numbers too
        if r.wanted is None or not sums.calibrations_other_than(s, scope, r.wanted):
            sums.tune_for_aggregates(s)
            return in_sql(s, scope), r.labels, Basis(calibration=q.calibration, computed="sql")
    readings = _stream(ctx, r, q.calibration)
    note = (
        f"some results were stored under another calibration than {q.calibration!r}: "
        f"{len(readings.ids)} results were recomputed from their raw scores in one pass"
    )
    if scope.source is not None:
        note += "; results whose rows were erased (their raw scores gone) are not among them"
    return (
        in_python(readings),
        r.labels,
        Basis(calibration=q.calibration, computed="stream", note=note),
    )


# -- the queries ---------------------------------------------------------------------------------
class Reliability(dash.ReliabilityOut):
    basis: Basis


def reliability(ctx: Ctx, name: str, q: Query, bins: int, binning: Binning) -> Reliability:
    rows, _, basis = _run(
        ctx,
        name,
        q,
        partial(sums.reliability, bins=bins, binning=binning),
        lambda r: dash.reliability_sums(r, bins, binning),
    )
    out = dash.finish_reliability(rows, bins, binning)
    return Reliability(**out.model_dump(), basis=basis)


TimeMetric = Literal[
    "volume", "accuracy", "ece", "brier", "mean_confidence", "coverage", "estimated_accuracy"
]


class Timeseries(BaseModel):
    bucket: Bucket
    metrics: list[str]
    points: list[dict[str, object]]
    basis: Basis


def timeseries(
    ctx: Ctx,
    name: str,
    q: Query,
    bucket: Bucket,
    wanted: list[TimeMetric],
    bins: int,
) -> Timeseries:
    resolved = _resolve(ctx, name, q)
    rows, _, basis = _run(
        ctx,
        name,
        q,
        partial(sums.bucket_bins, bucket=bucket, bins=bins),
        lambda r: dash.bucket_bin_sums(r, bins, bucket),
        resolved,
    )
    keep = ["bucket", *wanted, "labelled"]
    allowance = None
    if "estimated_accuracy" in wanted:  # beside `accuracy`, where labels exist
        keep += ["estimated_low", "estimated_high"]
        relied, _ = _relied_on(ctx, resolved)
        allowance = est.allowance((relied.metrics or {}).get("after")) if relied else None
    points = [p.model_dump(include=set(keep)) for p in dash.finish_timeseries(rows, allowance)]
    return Timeseries(bucket=bucket, metrics=list(wanted), points=points, basis=basis)


class Histogram(BaseModel):
    bins: list[dash.HistogramBin]
    basis: Basis


def confidence_histogram(ctx: Ctx, name: str, q: Query, bins: int) -> Histogram:
    rows, _, basis = _run(
        ctx,
        name,
        q,
        partial(sums.histogram, bins=bins),
        lambda r: dash.histogram_sums(r, bins),
    )
    return Histogram(bins=dash.finish_histogram(rows, bins), basis=basis)


class Confusion(dash.Confusion):
    basis: Basis


def confusion(ctx: Ctx, name: str, q: Query) -> Confusion:
    rows, labels, basis = _run(ctx, name, q, sums.confusion, dash.pair_counts)
    return Confusion(**dash.finish_confusion(rows, labels).model_dump(), basis=basis)


class LabelDistribution(dash.LabelDistribution):
    bucket: Bucket
    basis: Basis


def label_distribution(
    ctx: Ctx,
    name: str,
    q: Query,
    bucket: Bucket,
    reference_from: datetime | None,
    reference_to: datetime | None,
) -> LabelDistribution:
    """Predicted-label shares per bucket, each against the reference window's shares (the
    first bucket when no window is given)."""
    has_ref = reference_from is not None or reference_to is not None
    if reference_from and reference_to and reference_from >= reference_to:
        raise InputError("`reference_from` must be before `reference_to`", field="reference_from")

    # The reference window may lie outside [from, to): both passes read the widened scope
    # and cut each window out of it.
    in_sql = partial(
        sums.label_counts_against,
        bucket=bucket,
        window=(q.start, q.end),
        reference=(reference_from, reference_to) if has_ref else None,
    )

    def in_python(
        r: dash.Readings,
    ) -> tuple[list[dash.BucketLabelCount], list[dash.BucketLabelCount] | None]:
        ref = r.within(reference_from, reference_to)
        window = r.within(q.start, q.end)
        return dash.label_counts(window, bucket), dash.label_counts(ref, None) if has_ref else None

    wide = replace(q, start=None, end=None) if has_ref else q
    (rows, ref_rows), labels, basis = _run(ctx, name, wide, in_sql, in_python)
    reference = {"from": reference_from, "to": reference_to} if has_ref else {"first_bucket": True}
    out = dash.finish_label_distribution(rows, ref_rows, labels, reference)
    return LabelDistribution(**out.model_dump(), bucket=bucket, basis=basis)


class Selective(dash.Selective):
    basis: Basis


def selective(
    ctx: Ctx,
    name: str,
    q: Query,
    thresholds: list[float],
    target_accuracy: float | None,
) -> Selective:
    if len(thresholds) > MAX_THRESHOLDS:
        raise InputError(f"at most {MAX_THRESHOLDS} thresholds", field="thresholds")
    if any(not 0 <= t <= 1 for t in thresholds):
        raise InputError("thresholds must lie in [0, 1]", field="thresholds")
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise InputError("target_accuracy must lie in (0, 1]", field="target_accuracy")
    (rows, grid), _, basis = _run(
        ctx,
        name,
        q,
        partial(sums.thresholds_and_grid, values=thresholds),
        lambda r: (dash.threshold_sums(r, thresholds), dash.grid_sums(r)),
    )
    return Selective(**dash.finish_selective(rows, grid, target_accuracy).model_dump(), basis=basis)


class Compared(BaseModel):
    calibrations: list[Reliability]


def compare(
    ctx: Ctx,
    name: str,
    q: Query,
    choices: list[str],
    bins: int,
    binning: Binning,
) -> Compared:
    """The same reliability and metrics under each calibration, side by side."""
    if not 2 <= len(choices) <= 4:
        raise InputError("compare takes 2 to 4 calibrations, e.g. none,active", field="compare")
    return Compared(
        calibrations=[
            reliability(ctx, name, replace(q, calibration=c), bins, binning) for c in choices
        ]
    )


# -- accuracy without labels ---------------------------------------------------------------------
class CalibrationRelied(BaseModel):
    id: int
    method: str
    fitted_on_job: str | None
    held_out: int | None = Field(description="Items its held-out report was measured on.")
    held_out_accuracy: float | None = Field(description="Its accuracy on those items.")


class Measured(BaseModel):
    """The gold-labelled items among those estimated: what the estimate can be checked with."""

    labelled: int
    accuracy: float | None
    estimated: float | None = Field(description="The estimate on those labelled items alone.")


class EstimatedPerformance(BaseModel):
    estimate: est.Estimate
    calibration: CalibrationRelied | None
    measured: Measured
    validity: est.Validity
    basis: Basis


def estimated_performance(ctx: Ctx, name: str, q: Query, level: float) -> EstimatedPerformance:
    """The accuracy of the scored items in scope, estimated from their calibrated confidences
    (no labels needed), its interval, the calibration it relies on, and how far this traffic
    is from that calibration's own data (`labelq.estimation`)."""
    if not 0.5 <= level < 1:
        raise InputError("level must lie in [0.5, 1)", field="level")
    resolved = _resolve(ctx, name, q)
    inputs, _, basis = _run(ctx, name, q, sums.estimate_sums, dash.estimate_sums, resolved)
    relied, mixed = _relied_on(ctx, resolved)
    reference: tuple[list[float], dict[str, float], float] | None = None
    recorded = relied.fitted_on.get("reference") if relied is not None else None
    if recorded:  # what the fit recorded of its own data
        reference = (recorded["confidence"], recorded["labels"], recorded["mean_confidence"])
    elif relied is not None and (job := relied.fitted_on.get("job_id")):
        # A fit from before that: its job's items, read again under it (if still there).
        with contextlib.suppress(LabelqError):  # its job erased, or of another version
            found, _, _ = _run(
                ctx,
                name,
                Query(job=str(job), calibration=str(relied.id)),
                sums.estimate_sums,
                dash.estimate_sums,
            )
            if found.sums.n:
                reference = (
                    found.confidence_counts(),
                    found.label_counts(),
                    found.mean_confidence(),
                )
    after = (relied.metrics or {}).get("after") if relied else None
    s = inputs.sums
    out = EstimatedPerformance(
        estimate=est.estimate(s, est.allowance(after, level), level),
        calibration=None
        if relied is None
        else CalibrationRelied(
            id=relied.id,
            method=relied.method,
            fitted_on_job=relied.fitted_on.get("job_id"),
            held_out=(after or {}).get("n"),
            held_out_accuracy=(after or {}).get("accuracy"),
        ),
        measured=Measured(
            labelled=s.labelled,
            accuracy=s.correct / s.labelled if s.labelled else None,
            estimated=s.labelled_conf_sum / s.labelled if s.labelled else None,
        ),
        validity=est.validity(
            reference,
            (inputs.confidence_counts(), inputs.label_counts(), inputs.mean_confidence()),
            calibrated=relied is not None,
            reference_name=None
            if relied is None
            else f"the items of job {relied.fitted_on.get('job_id')} (calibration {relied.id})",
        ),
        basis=basis,
    )
    if mixed:
        out.validity.reasons.insert(0, mixed)
    return out


def _relied_on(ctx: Ctx, r: _Resolved) -> tuple[Calibration | None, str | None]:
    """The one calibration the figures are under: asked for, or the one every item in scope
    was stored under; None when uncalibrated, or with why when there are several."""
    with ctx.reads() as s:
        archive = ctx.services.features.has(s, "archive")
        scope = sums.with_archive(s, r.scope, archive=archive)  # erased rows' numbers too
        ids = sums.stored_calibrations(s, scope) if r.wanted is None else [*set(r.wanted.values())]
        if len(ids) > 1:
            return None, (
                "the items in scope are under several calibrations (or some under none): ask "
                "for one (calibration=active or an id) to estimate under it"
            )
        return (calibration_rows.get_calibration(s, ids[0]) if ids and ids[0] else None), None


# -- what to label next --------------------------------------------------------------------------
class ToLabelItem(BaseModel):
    job_id: str
    idx: int = Field(description="Position in its job's input.")
    custom_id: str | None
    input: dict[str, Any]
    predicted: str
    confidence: float


class ToLabel(BaseModel):
    items: list[ToLabelItem]
    by_label: dict[str, int]
    how: str


MAX_TO_LABEL = 1000


def to_label(ctx: Ctx, name: str, q: Query, n: int) -> ToLabel:
    """The `n` unlabelled scored items whose gold labels would most help a refit: the least
    confident (as stored), taken in turn from each predicted label (`labelq.labelscreen`)."""
    if not 1 <= n <= MAX_TO_LABEL:
        raise InputError(f"n must lie in [1, {MAX_TO_LABEL}]", field="n")
    r = _resolve(ctx, name, replace(q, calibration="stored"))
    with ctx.reads() as s:
        groups = [sums.least_confident(s, r.scope, label, n) for label in r.labels]
    chosen = labelscreen.in_turn(groups, n)
    by_label: dict[str, int] = {}
    for row in chosen:
        by_label[row.predicted] = by_label.get(row.predicted, 0) + 1
    return ToLabel(
        items=[ToLabelItem(**row._asdict()) for row in chosen],
        by_label=by_label,
        how="least confident first (as stored), one predicted label in turn; POST their gold "
        "labels to /v1/jobs/{job_id}/labels, then refit",
    )


# -- split by engine -----------------------------------------------------------------------------
class EngineSplit(BaseModel):
    fingerprint: str | None = Field(
        description="The engine (model files, dtype, versions, strategy); None: unknown (scored "
        "before fingerprints were recorded)."
    )
    n: int
    mean_confidence: float
    labelled: int
    accuracy: float | None


class EngineSplits(BaseModel):
    engines: list[EngineSplit]
    note: str | None


def by_engine(ctx: Ctx, name: str, q: Query) -> EngineSplits:
    """The scored items in scope split by the engine that scored them (confidences as stored):
    two precisions or builds on one queue show up as two rows whose figures differ."""
    r = _resolve(ctx, name, replace(q, calibration="stored"))
    with ctx.snapshot() as s:
        rows = sums.by_fingerprint(s, r.scope)
    engines = sorted(
        (
            EngineSplit(
                fingerprint=fp,
                n=n,
                mean_confidence=conf / n if n else 0.0,
                labelled=labelled,
                accuracy=correct / labelled if labelled else None,
            )
            for fp, n, conf, labelled, correct in rows
        ),
        key=lambda e: -e.n,
    )
    known = [e for e in engines if e.fingerprint]
    note = (
        f"{len(known)} engines scored these items: compare their figures; a calibration fits "
        "the engine it was fitted on (GET .../calibrations: fitted_on.fingerprints)"
        if len(known) > 1
        else None
    )
    return EngineSplits(engines=engines, note=note)
