"""Dashboard aggregations in SQL: one function per query, each returning the sums rows that
`labelq.dashboard` turns into metrics. The same on PostgreSQL and SQLite; on PostgreSQL they
read only an index (an index-only scan once the table is vacuumed): `ix_items_dashboard` for
every scored item, `ix_items_labelled` for the gold-labelled ones in confidence order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    and_,
    case,
    cast,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql import Select

from db.models import (
    ARCHIVED_COLUMNS,
    RESULT_COLUMNS,
    AnyRow,
    ArchivedItem,
    Chunk,
    Job,
    JobItem,
)
from labelq.dashboard import (
    GRID,
    BinSums,
    Bucket,
    BucketBinSums,
    BucketLabelCount,
    EstimateInputs,
    HistogramSums,
    PairCount,
    ThresholdSums,
)
from labelq.estimation import CONFIDENCE_BINS, Sums
from labelq.metrics import Binning

T = TypeVar("T")
# A query over a scope, in the caller's session: what a dashboard use case aggregates in SQL.
Aggregate = Callable[[Session, "Scope"], T]


@dataclass(frozen=True)
class Scope:
    """Which scored items a query reads: versions (classifier row ids), a job, a time window
    [start, end) on the scoring time; and from where (`c`): `items`, or `items` with the
    archived numbers of erased rows beside them (`with_archive`)."""

    classifier_ids: Sequence[int]
    job_id: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    source: Any = None  # None: `items` alone; else the union's columns (`with_archive`)
    fingerprint: str | None = None  # only items scored by this engine (their chunk's)

    @property
    def c(self) -> Any:
        """The row source's columns, by `items`' names (JobItem's attributes, or the union's)."""
        return JobItem if self.source is None else self.source

    def where(self) -> list[ColumnElement[bool]]:
        c = self.c
        conds: list[ColumnElement[bool]] = [
            c.classifier_id.in_(list(self.classifier_ids)),
            c.scored_at.is_not(None),
        ]
        if self.job_id is not None:
            conds.append(c.job_id == self.job_id)
        if self.start is not None:
            conds.append(c.scored_at >= self.start)
        if self.end is not None:
            conds.append(c.scored_at < self.end)
        if self.fingerprint is not None:
            conds.append(scored_by(c, self.fingerprint))
        return conds


def _chunk_of(c: Any) -> Select[str | None]:
    """The chunk that scored item `c`, with its job's row: the job's chunk `idx // chunk_size`
    (found by the chunks' unique (job_id, seq) index)."""
    return (
        select(Chunk.fingerprint)
        .join(Job, Job.id == Chunk.job_id)
        .where(Chunk.job_id == c.job_id, Chunk.seq == c.idx // Job.chunk_size)
        .correlate(JobItem)
    )


def scored_by(c: Any, fingerprint: str) -> ColumnElement[bool]:
    """Item `c` was scored by the engine `fingerprint`."""
    return _chunk_of(c).where(Chunk.fingerprint == fingerprint).exists()


def with_archive(s: Session, scope: Scope, *, archive: bool) -> Scope:
    """`scope` reading `items` and, when it holds rows of these versions (or this job), the
    archived numbers of item rows an erasure removed (`ArchivedItem`): the same columns, one
    UNION ALL, so every query's figures outlive the rows. Without such rows (or without the
    table, `archive` false: before migration 0023), `items` alone, as fast as ever."""
    if scope.fingerprint is not None or not archive:  # an archived row's chunk is gone
        return scope
    kept = select(ArchivedItem.id).where(ArchivedItem.classifier_id.in_(list(scope.classifier_ids)))
    if scope.job_id is not None:
        kept = kept.where(ArchivedItem.job_id == scope.job_id)
    if s.scalar(kept.limit(1)) is None:
        return scope
    union = union_all(
        select(*(getattr(JobItem, name) for name in ARCHIVED_COLUMNS)),
        select(*(getattr(ArchivedItem, name) for name in ARCHIVED_COLUMNS)),
    ).subquery("scored")
    return replace(scope, source=union.c)


def _dialect(s: Session) -> str:
    return s.get_bind().dialect.name


def _n(value: int) -> ColumnElement[int]:
    """An integer written into the SQL, not bound: PostgreSQL matches a grouping expression
    to its extended statistics (migration 0006) only when the constants are in the text, and
    with those statistics it aggregates in each parallel worker instead of sending every row
    to one."""
    return literal_column(str(int(value)), Integer)


def _ceil(s: Session, x: ColumnElement[Any]) -> ColumnElement[int]:
    if _dialect(s) == "sqlite":  # no ceil() unless SQLite was built with its math functions
        return cast(x, Integer) + case((x > cast(x, Integer), 1), else_=0)
    return cast(func.ceil(x), Integer)


def _floor(s: Session, x: ColumnElement[Any]) -> ColumnElement[int]:
    """floor(x) for x >= 0 (SQLite's CAST truncates; PostgreSQL's rounds)."""
    if _dialect(s) == "sqlite":
        return cast(x, Integer)
    return cast(func.floor(x), Integer)


def _clip(s: Session, x: ColumnElement[int], low: int, high: int) -> ColumnElement[int]:
    if _dialect(s) == "sqlite":  # SQLite's two-argument min() and max() are scalar
        return func.min(func.max(x, low), high)
    return func.least(func.greatest(x, _n(low)), _n(high))


def width_bin(s: Session, bins: int, c: Any = JobItem) -> ColumnElement[int]:
    """Equal-width bin (i/B, (i+1)/B], 0 in the first: clip(ceil(c * B) - 1, 0, B - 1)."""
    return _clip(s, _ceil(s, c.confidence * _n(bins)) - _n(1), 0, bins - 1)


BUCKET_SECONDS = {"hour": 3600, "day": 86400}


def bucket_of(s: Session, bucket: Bucket, c: Any = JobItem) -> ColumnElement[Any]:
    """The bucket key: on PostgreSQL the bucket's start (`date_bin`: timestamp arithmetic, a
    seventh of what `date_part('epoch', ...)` costs per row, which goes through numeric); on
    SQLite whole hours or days since the epoch (UTC)."""
    if _dialect(s) == "sqlite":
        seconds = cast(func.strftime("%s", c.scored_at), Integer)
        return cast(seconds / BUCKET_SECONDS[bucket], Integer)
    return func.date_bin(
        literal_column(f"INTERVAL '{BUCKET_SECONDS[bucket]} seconds'"),
        c.scored_at,
        literal_column("TIMESTAMPTZ '1970-01-01 00:00:00+00'"),
        type_=DateTime(timezone=True),
    )


def _as_time(key: Any, bucket: Bucket) -> datetime:
    if isinstance(key, datetime):
        return key.astimezone(UTC)
    return datetime.fromtimestamp(int(key) * BUCKET_SECONDS[bucket], UTC)


def tune_for_aggregates(s: Session) -> None:
    """On PostgreSQL, for this transaction: read the covering index (an index-only scan beats
    reading the table's JSON rows; random_page_cost 1.1 is the usual SSD setting), in
    parallel, without JIT (compiling costs more than it saves on sub-second queries), sorting
    in memory (equal-mass bins sort every labelled item: with the default 4 MB they spilled to
    disk)."""
    if _dialect(s) != "postgresql":
        return
    for setting in (
        "jit = off",
        "work_mem = '64MB'",
        "random_page_cost = 1.1",
        "parallel_setup_cost = 10",
        "parallel_tuple_cost = 0.001",
    ):
        s.execute(text(f"SET LOCAL {setting}"))


def _labelled(c: Any) -> ColumnElement[bool]:
    return c.correct.is_not(None)  # type: ignore[no-any-return]


def _correct(c: Any) -> ColumnElement[int]:
    return cast(c.correct, Integer)


def calibrations_other_than(s: Session, scope: Scope, wanted: dict[int, int | None]) -> bool:
    """Whether any item in scope was stored under another calibration than `wanted` names for
    its classifier version (None: uncalibrated)."""
    c = scope.c
    other = or_(
        *(
            and_(c.classifier_id == cid, c.calibration_id.is_distinct_from(cal))
            for cid, cal in wanted.items()
        )
    )
    return s.scalar(select(c.id).where(*scope.where(), other).limit(1)) is not None


def stored_calibrations(s: Session, scope: Scope, limit: int = 3) -> list[int | None]:
    """The calibrations the items in scope were stored under (None: uncalibrated), a few."""
    c = scope.c
    return list(s.scalars(select(c.calibration_id).where(*scope.where()).distinct().limit(limit)))


def reliability(s: Session, scope: Scope, bins: int, binning: Binning) -> list[BinSums]:
    c = scope.c
    if binning == "width":
        b: ColumnElement[int] = width_bin(s, bins, c)
    else:  # equal mass: np.array_split of the stable ascending order is ntile's grouping
        b = func.ntile(bins).over(order_by=(c.confidence, c.id)) - 1
    sub = (
        select(
            b.label("bin"),
            c.confidence.label("conf"),
            _correct(c).label("correct"),
            c.brier.label("brier"),
        )
        .where(*scope.where(), _labelled(c))
        .subquery()
    )
    rows = s.execute(
        select(
            sub.c.bin,
            func.count(),
            func.sum(sub.c.conf),
            func.sum(sub.c.correct),
            func.coalesce(func.sum(sub.c.brier), 0.0),
            func.min(sub.c.conf),
            func.max(sub.c.conf),
        ).group_by(sub.c.bin)
    )
    return [
        BinSums(int(b), int(n), float(cs), int(k), float(bs), float(lo), float(hi))
        for b, n, cs, k, bs, lo, hi in rows
    ]


def histogram(s: Session, scope: Scope, bins: int) -> list[HistogramSums]:
    c = scope.c
    sub = (
        select(width_bin(s, bins, c).label("bin"), c.correct.label("correct"))
        .where(*scope.where())
        .subquery()
    )
    rows = s.execute(
        select(
            sub.c.bin,
            func.count(),
            func.count(sub.c.correct),
            func.sum(cast(sub.c.correct, Integer)),
        ).group_by(sub.c.bin)
    )
    return [
        HistogramSums(int(b), int(right or 0), int(lab) - int(right or 0), int(n) - int(lab))
        for b, n, lab, right in rows
    ]


def bucket_bins(s: Session, scope: Scope, bucket: Bucket, bins: int) -> list[BucketBinSums]:
    c = scope.c
    sub = (
        select(
            bucket_of(s, bucket, c).label("bucket"),
            width_bin(s, bins, c).label("bin"),
            c.confidence.label("conf"),
            c.correct.label("correct"),
            c.brier.label("brier"),
        )
        .where(*scope.where())
        .subquery()
    )
    labelled_conf = case((sub.c.correct.is_not(None), sub.c.conf), else_=0.0)
    rows = s.execute(
        select(
            sub.c.bucket,
            sub.c.bin,
            func.count(),
            func.sum(sub.c.conf),
            func.count(sub.c.correct),
            func.sum(labelled_conf),
            func.coalesce(func.sum(cast(sub.c.correct, Integer)), 0),
            func.coalesce(func.sum(sub.c.brier), 0.0),
        ).group_by(sub.c.bucket, sub.c.bin)
    )
    return [
        BucketBinSums(
            _as_time(r[0], bucket),
            int(r[1]),
            int(r[2]),
            float(r[3]),
            int(r[4]),
            float(r[5]),
            int(r[6]),
            float(r[7]),
        )
        for r in rows
    ]


def confusion(s: Session, scope: Scope) -> list[PairCount]:
    c = scope.c
    rows = s.execute(
        select(c.gold_label, c.predicted, func.count())
        .where(*scope.where(), _labelled(c))
        .group_by(c.gold_label, c.predicted)
    )
    return [PairCount(str(g), str(p), int(n)) for g, p, n in rows]


def label_counts(s: Session, scope: Scope, bucket: Bucket | None) -> list[BucketLabelCount]:
    """Predicted labels counted per time bucket (None: over the whole scope)."""
    c = scope.c
    key: ColumnElement[Any] = bucket_of(s, bucket, c) if bucket else literal(None)
    sub = select(key.label("bucket"), c.predicted).where(*scope.where()).subquery()
    rows = s.execute(
        select(sub.c.bucket, sub.c.predicted, func.count()).group_by(sub.c.bucket, sub.c.predicted)
    )
    return [
        BucketLabelCount(_as_time(b, bucket) if bucket else None, str(p), int(n))
        for b, p, n in rows
    ]


def thresholds(s: Session, scope: Scope, values: Iterable[float]) -> list[ThresholdSums]:
    c = scope.c
    values = list(values)
    columns = []
    for t in values:
        above = c.confidence >= t
        columns += [
            func.sum(case((above, 1), else_=0)),
            func.sum(case((above, _correct(c)), else_=0)),
        ]
    if not columns:
        return []
    row = s.execute(select(*columns).where(*scope.where(), _labelled(c))).one()
    return [
        ThresholdSums(t, int(row[2 * k] or 0), int(row[2 * k + 1] or 0))
        for k, t in enumerate(values)
    ]


def grid(s: Session, scope: Scope) -> list[ThresholdSums]:
    """Labelled items per cell floor(confidence * GRID): thresholds on a 1/GRID grid."""
    c = scope.c
    raw = _floor(s, c.confidence * GRID)
    cell = case((raw > GRID, GRID), else_=raw)
    sub = (
        select(cell.label("cell"), _correct(c).label("correct"))
        .where(*scope.where(), _labelled(c))
        .subquery()
    )
    rows = s.execute(select(sub.c.cell, func.count(), func.sum(sub.c.correct)).group_by(sub.c.cell))
    return [ThresholdSums(int(c) / GRID, int(n), int(k)) for c, n, k in rows]


def scored_items(
    s: Session, scope: Scope, job_id: str, after_id: int, limit: int
) -> Sequence[AnyRow]:
    """A page of one job's scored items in scope, by id, as `id`, `scored_at` and
    RESULT_COLUMNS: the streamed pass's input."""
    return (
        s.connection()
        .execute(
            select(JobItem.__table__.c.id, JobItem.__table__.c.scored_at, *RESULT_COLUMNS)
            .where(*scope.where(), JobItem.job_id == job_id, JobItem.id > after_id)
            .order_by(JobItem.id)
            .limit(limit)
        )
        .all()
    )


def jobs_in(s: Session, scope: Scope) -> list[str]:
    return list(s.scalars(select(JobItem.job_id).where(*scope.where()).distinct()))


def label_counts_against(
    s: Session,
    scope: Scope,
    bucket: Bucket,
    window: tuple[datetime | None, datetime | None],
    reference: tuple[datetime | None, datetime | None] | None,
) -> tuple[list[BucketLabelCount], list[BucketLabelCount] | None]:
    """Predicted-label counts per bucket over `window`, and over the `reference` window as one
    bucket (None: no reference), both cut out of `scope`."""
    counts = label_counts(s, replace(scope, start=window[0], end=window[1]), bucket)
    if reference is None:
        return counts, None
    return counts, label_counts(s, replace(scope, start=reference[0], end=reference[1]), None)


def thresholds_and_grid(
    s: Session, scope: Scope, values: Iterable[float]
) -> tuple[list[ThresholdSums], list[ThresholdSums]]:
    """`thresholds` at `values` and the whole `grid`, in one session."""
    return thresholds(s, scope, values), grid(s, scope)


def estimate_sums(s: Session, scope: Scope) -> EstimateInputs:
    """What the label-free accuracy estimate reads (`labelq.estimation`): the confidence sums,
    the labelled items' accuracy beside it, the confidence histogram and the predicted-label
    counts its validity compares with the calibration set's."""
    c = scope.c
    n, conf, conf_sq, n_labelled, labelled_conf, right = s.execute(
        select(
            func.count(),
            func.sum(c.confidence),
            func.sum(c.confidence * c.confidence),
            func.count(c.correct),
            func.sum(case((_labelled(c), c.confidence), else_=0.0)),
            func.sum(_correct(c)),
        ).where(*scope.where())
    ).one()
    sums = Sums(
        n=int(n),
        conf_sum=float(conf or 0),
        conf_sq_sum=float(conf_sq or 0),
        labelled=int(n_labelled),
        labelled_conf_sum=float(labelled_conf or 0),
        correct=int(right or 0),
    )
    return EstimateInputs(
        sums,
        histogram(s, scope, CONFIDENCE_BINS),
        label_counts(s, scope, None),
    )


def least_confident(s: Session, scope: Scope, predicted: str, limit: int) -> list[Any]:
    """Up to `limit` scored items in scope predicted `predicted`, with no gold label and their
    input still stored (an erased one cannot be labelled), least confident first: `job_id`,
    `idx`, `custom_id`, `input`, `predicted`, `confidence`."""
    return list(
        s.execute(
            select(
                JobItem.job_id,
                JobItem.idx,
                JobItem.custom_id,
                JobItem.input,
                JobItem.predicted,
                JobItem.confidence,
            )
            .where(
                *scope.where(),
                JobItem.predicted == predicted,
                JobItem.gold_label.is_(None),
                JobItem.input.is_not(None),
            )
            .order_by(JobItem.confidence, JobItem.id)
            .limit(limit)
        ).all()
    )


def by_fingerprint(s: Session, scope: Scope) -> list[tuple[str | None, int, float, int, int]]:
    """Per engine fingerprint that scored items in scope (None: unknown, scored before
    fingerprints or its chunk gone): (fingerprint, n, confidence sum, labelled, correct)."""
    c = JobItem
    fp = _chunk_of(c).scalar_subquery().label("fingerprint")
    sub = select(fp, c.confidence, c.correct).where(*scope.where()).subquery()
    rows = s.execute(
        select(
            sub.c.fingerprint,
            func.count(),
            func.sum(sub.c.confidence),
            func.count(sub.c.correct),
            func.coalesce(func.sum(cast(sub.c.correct, Integer)), 0),
        ).group_by(sub.c.fingerprint)
    )
    return [(f, int(n), float(cs or 0), int(lab), int(k)) for f, n, cs, lab, k in rows]
