"""Scoring one chunk of a job: claim it under a lease, score it in one batch while the lease is
renewed, write every result in one transaction.

Three short transactions on purpose: none is held open while the engine scores. What can go
wrong ends somewhere:
- an item that cannot be scored fails alone (its error is its result);
- the engine failing for the whole batch (a model that cannot load, a dead engine) hands the
  chunk back to be retried after a backoff, a bounded number of times, then fails its items and
  the job's unclaimed chunks with the engine's error;
- the worker dying lets the lease expire, and the reconciler sends the chunk again;
- the database going away while writing is retried for a while, then left to the lease.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from db import chunks
from db.calibrations import active_calibration
from db.chunks import ChunkWork, ItemOutcome
from labelq.errors import EngineStopped
from labelq.scoring import Item, ItemError, ItemResult, ScoredItem, Scorer
from labelq.settings import Settings
from labelq.spec import ClassifierSpec
from service.calibrations import under
from service.context import Ctx
from service.leases import KeepAlive

log = logging.getLogger(__name__)
T = TypeVar("T")

ScorerFor = Callable[[str], Scorer]

# A database that restarts comes back in seconds; past this the lease takes over.
_write_retry = retry(
    retry=retry_if_exception_type((OperationalError, DBAPIError)),
    wait=wait_exponential(multiplier=0.5, max=10),
    stop=stop_after_delay(120),
    reraise=True,
)


class EngineFailure(Exception):
    """The engine failed whatever it was given: not any item's fault."""


class BatchScorer(Protocol):
    def score_batch(self, spec: ClassifierSpec, items: Sequence[Item]) -> list[ScoredItem]: ...


# The engine a batch is scored on, after `restart()` a fresh one (an engine that failed may be
# dead for good: vLLM's EngineCore raises EngineDeadError on every call after it died).
Engine = Callable[[], BatchScorer]


class Progress:
    """Whether a chunk's work is moving: the engine call under way (since when, and for how
    long it may take). The lease keeper stops renewing once a call overstays its time by
    `grace` (the watchdog that should have ended it did not), so another worker may take the
    chunk."""

    def __init__(self, grace: float):
        self.grace = grace
        self._since = time.monotonic()
        self._allowed: float | None = None

    def begin(self, allowed: float) -> None:
        self._since, self._allowed = time.monotonic(), allowed

    def end(self) -> None:
        self._since, self._allowed = time.monotonic(), None

    def stalled(self) -> bool:
        if self._allowed is None:
            return False
        return time.monotonic() - self._since > self._allowed + self.grace


class Health:
    """Whether this worker's engine answers. Down from the moment an engine call overstays
    its deadline (the engine is killed and restarts) until a batch is scored again; the
    heartbeat reports the worker gone meanwhile, so `/readyz`, a job's status and the
    reconciler see its queue unserved instead of healthy."""

    def __init__(self) -> None:
        self.trouble: str | None = None
        self._listeners: list[Callable[[], None]] = []

    def listen(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def down(self, why: str) -> None:
        self.trouble = why
        self._tell()

    def up(self) -> None:
        if self.trouble is not None:
            self.trouble = None
            self._tell()

    def _tell(self) -> None:
        for listener in self._listeners:
            listener()


class _Hung(Exception):
    pass


def _within(call: Callable[[], T], seconds: float) -> T:
    """`call()` in a thread of its own, given `seconds`: past them `_Hung` (the thread is
    left to its fate: a wedged engine call returns only when its engine is killed)."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(1)

    def run() -> None:
        try:
            box.put((True, call()))
        except BaseException as exc:
            box.put((False, exc))

    threading.Thread(target=run, name="labelq-engine-call", daemon=True).start()
    try:
        ok, value = box.get(timeout=seconds)
    except queue.Empty:
        raise _Hung from None
    if ok:
        return cast(T, value)
    raise value


class EngineMeter:
    """Engine time, shared fairly between the calls that run at once (a worker's two tasks
    share its one engine): while k calls run, each is charged 1/k of the time that passes, so
    the charges add up to the time the engine was busy, never twice over."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._charges: dict[int, float] = {}
        self._since = time.monotonic()
        self._next = 0
        self._busy = 0.0

    @property
    def busy_seconds(self) -> float:
        """Seconds the engine has been busy with at least one call, since this meter began
        (a worker's `labelq_worker_engine_seconds_total`)."""
        with self._lock:
            self._advance()
            return self._busy

    def _advance(self) -> None:
        now = time.monotonic()
        if self._charges:
            self._busy += now - self._since
            share = (now - self._since) / len(self._charges)
            for key in self._charges:
                self._charges[key] += share
        self._since = now

    def start(self) -> int:
        with self._lock:
            self._advance()
            self._next += 1
            self._charges[self._next] = 0.0
            return self._next

    def stop(self, call: int) -> float:
        """The seconds charged to `call`, which has ended."""
        with self._lock:
            self._advance()
            return self._charges.pop(call)


class Watched:
    """A scorer whose every call has a deadline, `LABELQ_SCORE_TIMEOUT` per item (at least
    `LABELQ_SCORE_TIMEOUT_FLOOR`): an engine past it is taken as hung (a wedged GPU, a stopped
    engine core), killed by `on_hang`, and the call fails as the engine's fault."""

    def __init__(
        self,
        scorer: BatchScorer,
        settings: Settings,
        progress: Progress,
        on_hang: Callable[[], None],
        health: Health,
        meter: EngineMeter,
        charge: Callable[[float], None],
    ):
        self.scorer, self.settings, self.progress = scorer, settings, progress
        self.on_hang, self.health = on_hang, health
        self.meter, self.charge = meter, charge

    def score_batch(self, spec: ClassifierSpec, items: Sequence[Item]) -> list[ScoredItem]:
        seconds = max(self.settings.score_timeout_floor, self.settings.score_timeout * len(items))
        self.progress.begin(seconds)
        call = self.meter.start()
        try:
            scored = _within(lambda: self.scorer.score_batch(spec, items), seconds)
        except _Hung:
            log.error("the engine did not answer within %g s: killing it", seconds)
            self.health.down(f"the engine did not answer within {seconds:g} s: restarting")
            self.on_hang()
            raise EngineFailure(
                f"the engine did not answer within {seconds:g} s: it was killed and restarts"
            ) from None
        finally:
            self.progress.end()
            self.charge(self.meter.stop(call))
        self.health.up()
        return scored


def score_items(
    engine: Engine, restart: Callable[[], None], spec: ClassifierSpec, items: Sequence[Item]
) -> list[ScoredItem]:
    """Score a batch. When the engine fails on it, find the items at fault: the batch is split
    in halves, each scored on a fresh engine, down to single items; an item the engine fails
    on alone fails alone (`engine` kind, with the engine's error), the others are scored.
    When every item fails alone, the fault is the engine's, not theirs: `EngineFailure`."""
    try:
        try:
            return engine().score_batch(spec, items)
        except EngineStopped:  # it was killed under this call (another's hung): a new one
            return engine().score_batch(spec, items)
    except EngineFailure:
        raise  # the engine hung or does not load: no item is at fault
    except Exception as batch_error:
        log.warning(
            "a batch of %d failed (%s: %s); finding the items at fault",
            len(items),
            type(batch_error).__name__,
            batch_error,
        )
        first_error = batch_error
    restart()
    out: list[ScoredItem] = []
    alone = _bisect(engine, restart, spec, list(items), out)
    if alone == len(items):
        raise EngineFailure(f"{type(first_error).__name__}: {first_error}") from first_error
    return out


def _bisect(
    engine: Engine,
    restart: Callable[[], None],
    spec: ClassifierSpec,
    items: list[Item],
    out: list[ScoredItem],
) -> int:
    """Score `items` into `out` (in order) in halves, restarting the engine after each
    failure; returns how many items failed alone."""
    if len(items) == 1:
        try:
            out.extend(engine().score_batch(spec, items))
            return 0
        except EngineFailure:
            raise  # the model does not load any more: no item is at fault
        except Exception as exc:
            restart()
            item = items[0]
            out.append(
                ItemError(
                    custom_id=item.custom_id,
                    line=item.line,
                    error=f"the engine failed on this item: {type(exc).__name__}: {exc}",
                    kind="engine",
                )
            )
            return 1
    failed = 0
    middle = len(items) // 2
    for half in (items[:middle], items[middle:]):
        try:
            out.extend(engine().score_batch(spec, half))
        except EngineFailure:
            raise
        except Exception:
            restart()
            failed += _bisect(engine, restart, spec, half, out)
    return failed


class LeaseKeeper(KeepAlive):
    """Renews a claimed chunk's lease every third of its length until stopped. A renewal that
    fails (database away) is retried at the next beat; a lost claim is logged, and a call
    that overstays its time (`progress`) lets the lease go."""

    def __init__(
        self, ctx: Ctx, work: ChunkWork, lease_seconds: float, progress: Progress | None = None
    ):
        self.ctx, self.work, self.lease = ctx, work, lease_seconds
        self.progress = progress
        super().__init__(self._renew, lease_seconds / 3, f"lease-{work.chunk_id}")

    def _renew(self) -> bool:
        if self.progress is not None and self.progress.stalled():
            log.error(
                "chunk %s/%d: no progress, its lease is let go (another worker takes it)",
                self.work.job_id,
                self.work.seq,
            )
            return False
        with self.ctx.tx() as s:
            held = chunks.renew_lease(s, self.work.chunk_id, self.work.owner, self.lease)
        if not held:
            log.warning(
                "lost the claim on chunk %s/%d; its results will not be written",
                self.work.job_id,
                self.work.seq,
            )
        return held


@dataclass
class ChunkRunner:
    """Runs chunks for one worker, in the system context: `name` identifies it in leases;
    `discard` drops a model's engine after it failed (that engine, if the model still has
    it), so the next attempt loads it afresh."""

    ctx: Ctx
    scorer_for: ScorerFor
    name: str
    discard: Callable[[str, Scorer], None] | None = None
    # Kills an engine of a model that stopped answering (default: `discard` it).
    kill: Callable[[str, Scorer], None] | None = None
    calibrate: bool = True
    health: Health = field(default_factory=Health)
    meter: EngineMeter = field(default_factory=EngineMeter)

    def run(self, job_id: str, seq: int) -> bool:
        """Score chunk `seq` of a job; False when there was nothing to write (done, cancelled,
        held by another worker, not yet due, or handed back after an engine failure)."""
        s = self.ctx.settings
        owner = f"{self.name}/{uuid.uuid4().hex[:8]}"
        with self.ctx.tx() as session:
            work = chunks.claim_chunk(
                session,
                job_id,
                seq,
                owner,
                lease_seconds=s.lease_seconds,
                max_attempts=s.max_chunk_attempts,
            )
        if work is None:
            return False
        progress = Progress(grace=s.lease_seconds)
        with LeaseKeeper(self.ctx, work, s.lease_seconds, progress):
            spent: list[float] = []  # engine seconds charged to this chunk's calls
            try:
                scored, engine = self._score(work, progress, spent.append)
            except EngineFailure as exc:
                self._hand_back(work, str(exc))
                return False
        return self._write(work, scored, engine, sum(spent))

    def _score(
        self, work: ChunkWork, progress: Progress, charge: Callable[[float], None]
    ) -> tuple[list[ScoredItem], str | None]:
        """The chunk's items scored, and the fingerprint of the engine that scored them; each
        engine call's share of the engine's time is passed to `charge`."""
        if not work.items:
            return [], None

        used: list[Scorer] = []  # the engine this chunk scored on last

        def engine() -> BatchScorer:
            try:
                scorer = self.scorer_for(work.model)
            except Exception as exc:
                raise EngineFailure(f"model {work.model} could not be loaded: {exc}") from exc
            used[:] = [scorer]

            def hung() -> None:  # that engine, not whichever the model has by then
                if self.kill is not None:
                    self.kill(work.model, scorer)
                elif self.discard is not None:
                    self.discard(work.model, scorer)

            return Watched(
                scorer, self.ctx.settings, progress, hung, self.health, self.meter, charge
            )

        def restart() -> None:  # the engine that failed this chunk, never one loaded since
            if self.discard is not None and used:
                self.discard(work.model, used[0])

        engine()  # a model that cannot load is the engine's fault, not any item's
        try:
            scored = score_items(engine, restart, work.spec, [item for _, item in work.items])
        except EngineFailure:
            restart()
            raise
        return scored, used[0].fingerprint if used else None

    def _hand_back(self, work: ChunkWork, error: str) -> None:
        settings = self.ctx.settings
        retry_in = min(settings.engine_retry_backoff * 2 ** (work.attempt - 1), 600.0)
        log.error(
            "engine failed on chunk %s/%d (attempt %d of %d): %s",
            work.job_id,
            work.seq,
            work.attempt,
            settings.max_chunk_attempts,
            error,
        )
        with self.ctx.tx() as session:
            chunks.release_chunk(
                session, work, error, retry_in=retry_in, max_attempts=settings.max_chunk_attempts
            )

    @_write_retry
    def _write(
        self, work: ChunkWork, scored: list[ScoredItem], engine: str | None, seconds: float = 0.0
    ) -> bool:
        """The chunk's results, calibrated under the active calibration, in one transaction,
        with the fingerprint of the engine that scored them and what they cost (engine seconds
        and prompt tokens, added to the job's where the schema has them: migration 0024). A
        calibration fitted on another engine's scores is flagged on the chunk (and, with
        LABELQ_CALIBRATION_ENGINE_MISMATCH `refuse`, not applied: the results are stored
        uncalibrated)."""
        succeeded = [row.model_dump(mode="json") for row in scored if isinstance(row, ItemResult)]
        mismatch: bool | None = None
        with self.ctx.tx() as session:
            calibration_id = None
            if self.calibrate and succeeded:
                active = active_calibration(session, work.classifier_id)
                fitted = (active.fitted_on or {}).get("fingerprints") if active else None
                if active is not None and fitted and engine:
                    mismatch = engine not in fitted
                    if mismatch:
                        log.warning(
                            "chunk %s/%d: engine %s, calibration %d fitted on %s",
                            work.job_id, work.seq, engine, active.id, ",".join(fitted),
                        )  # fmt: skip
                        if self.ctx.settings.calibration_engine_mismatch == "refuse":
                            active = None
                succeeded = under(active, work.spec, succeeded)
                calibration_id = active.id if active else None
            calibrated = iter(succeeded)
            results: dict[int, ItemOutcome] = {}
            for (item_id, _), row in zip(work.items, scored, strict=True):
                results[item_id] = (
                    ItemOutcome(next(calibrated))
                    if isinstance(row, ItemResult)
                    else ItemOutcome(None, row.error, row.kind)
                )
            cost = None
            if self.ctx.services.features.has(session, "cost"):
                tokens = sum(r.prompt_tokens for r in scored if isinstance(r, ItemResult))
                cost = chunks.Cost(seconds, tokens)
            written = chunks.complete_chunk(
                session, work, results, calibration_id, engine, mismatch, cost
            )
        if not written:
            log.info("chunk %s/%d is no longer ours; results not written", work.job_id, work.seq)
        return written
