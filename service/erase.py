"""Erasure and retention: `DELETE /v1/jobs/{id}`, `labelq tenants erase NAME`, and the
retention the operator sets (LABELQ_RETENTION), all done the same way: an erasure is asked for
on the job in one transaction, then done in batches of LABELQ_ERASE_BATCH item rows, each its
own transaction, by the reconciler's sweep (at most LABELQ_ERASE_PER_SWEEP rows a sweep) or
by the caller while it waits. A process that dies halfway leaves the request on the job, and
the next sweep goes on from what is left: every step is idempotent.

A job still scoring is cancelled first and erased once it has ended, so no worker writes a
result into an erased job. What each level keeps is `db.models.Erase`'s docstring.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, Field

from db import erase as rows
from db import jobs as job_rows
from db.classifiers import classifier_ids
from db.models import Erase, JobState
from db.session import db_now
from labelq.settings import Retention
from service.context import Ctx

log = logging.getLogger(__name__)

Keep = Literal["tombstone", "nothing"]
LEVEL_OF_KEEP: dict[str, Erase] = {"tombstone": Erase.content, "nothing": Erase.job}


class Erasure(BaseModel):
    job_id: str
    erase: Erase = Field(description="content: the job and its numbers stay; job: all goes")
    done: bool = Field(description="false: the reconciler goes on with it, batch by batch")


def erase_job(ctx: Ctx, job_id: str, keep: Keep, *, budget: int | None = None) -> Erasure:
    """Ask for a job's erasure (a job still going is cancelled first) and do up to `budget`
    item rows of it now (LABELQ_ERASE_PER_SWEEP by default); the sweep does the rest."""
    level = LEVEL_OF_KEEP[keep]
    with ctx.tx() as s:
        job = job_rows.get_job(s, job_id, tenant=ctx.tenant, for_update=True)
        rows.request(s, job, level)  # cancels it first if it is still going
        level = Erase(job.erase or level)
        ended = JobState(job.state).finished
    done = ended and _run(ctx, job_id, level, budget or ctx.settings.erase_per_sweep)[1]
    return Erasure(job_id=job_id, erase=level, done=done)


def _run(ctx: Ctx, job_id: str, level: Erase, budget: int) -> tuple[int, bool]:
    """Batches of one job's erasure until it is done or `budget` rows are spent."""
    spent = 0
    batch = ctx.settings.erase_batch
    while True:
        with ctx.tx() as s:
            archive = ctx.services.features.has(s, "archive")
            step = rows.step(s, job_id, level, min(batch, max(1, budget - spent)), archive=archive)
        spent += step.rows
        if step.done or spent >= budget or not step.rows:  # no rows: waits for an upgrade
            return spent, step.done


class ErasureReport(BaseModel):
    marked: int = 0  # jobs retention asked an erasure for
    rows: int = 0  # item rows scrubbed or deleted
    jobs_done: int = 0


def sweep(ctx: Ctx) -> ErasureReport:
    """The sweep's part (the system context): retention marks what has expired, then pending
    erasures go on, oldest first, within LABELQ_ERASE_PER_SWEEP rows."""
    report = ErasureReport(marked=apply_retention(ctx))
    budget = ctx.settings.erase_per_sweep
    with ctx.reads() as s:
        todo = rows.pending(s, 100, tenant=None)
    for job_id, level in todo:
        spent, done = _run(ctx, job_id, level, budget - report.rows)
        report.rows += spent
        report.jobs_done += done
        if report.rows >= budget:
            break
    return report


def _policy(ctx: Ctx, name: str) -> Retention | None:
    """The retention of tenant `name`."""
    policies = ctx.settings.retention
    return policies.get(name) or policies.get("*")


def apply_retention(ctx: Ctx) -> int:
    """Mark every tenant's ended jobs past their retention (from the job's creation): items
    first (the stronger), then results; a classifier's override wins over its tenant's."""
    if not ctx.settings.retention:
        return 0
    marked = 0
    limit = ctx.settings.erase_per_sweep
    with ctx.tx() as s:
        now = db_now(s)
        for tenant in rows.tenants_with_jobs(s):
            policy = _policy(ctx, tenant)
            if policy is None:
                continue
            overridden: list[int] = []
            groups: list[tuple[list[int] | None, Retention]] = []
            for name, override in policy.classifiers.items():
                named = classifier_ids(s, name, tenant=tenant)
                overridden += named
                merged = Retention(
                    results_days=override.results_days or policy.results_days,
                    items_days=override.items_days or policy.items_days,
                )
                groups.append((named, merged))
            others = (
                None if not overridden else rows.other_classifiers(s, overridden, tenant=tenant)
            )
            groups.append((others, policy))
            for ids, days in groups:
                if ids is not None and not ids:
                    continue
                for level, kept in (
                    (Erase.items, days.items_days),
                    (Erase.content, days.results_days),
                ):
                    if kept:
                        before = now - timedelta(days=kept)
                        marked += rows.expired_jobs(s, ids, before, level, limit, tenant=tenant)
    return marked


class TenantErasure(BaseModel):
    tenant: str
    keys_revoked: int
    jobs_erased: int
    waiting_on: list[str] = Field(description="jobs still scoring: run the erasure again")
    removed: dict[str, int] = Field(default_factory=dict)
    done: bool


def erase_tenant(ctx: Ctx, *, wait: float = 60.0) -> TenantErasure:
    """Everything of the context's tenant: its keys first (nothing new arrives), its
    pipelines disabled, its unfinished jobs cancelled, every job erased whole, then its
    classifiers, calibrations, counts, pipelines, deliveries and webhook secret. Waits up to
    `wait` seconds for jobs still scoring; run again, it goes on from where it stopped."""
    tenant = ctx.owner
    with ctx.tx() as s:
        revoked = rows.revoke_keys(s, tenant=tenant)
        rows.disable_pipelines(s, tenant=tenant)
        for job_id in rows.unfinished_jobs(s, tenant=tenant):  # cancelled first
            rows.request(s, job_rows.get_job(s, job_id, tenant=tenant, for_update=True), Erase.job)
        rows.mark_tenant_jobs(s, tenant=tenant)  # and every ended one, in one statement
    # other API processes drop them within LABELQ_KEY_CACHE_SECONDS, as for a revoked key
    ctx.services.trusted_keys.forget(of_tenant=tenant)
    erased = 0
    deadline = time.monotonic() + wait
    while True:
        with ctx.reads() as s:
            todo = rows.pending(s, 100, tenant=tenant)
        for job_id, level in todo:
            erased += _run(ctx, job_id, level, 10**12)[1]
        with ctx.reads() as s:
            waiting = rows.unfinished_jobs(s, tenant=tenant)
            left = rows.jobs_left(s, tenant=tenant)
        if not left or (not todo and (not waiting or time.monotonic() > deadline)):
            break
        if not todo:
            time.sleep(0.5)
    removed: dict[str, int] = {}
    if not left:
        with ctx.tx() as s:
            removed = rows.tenant_rows(
                s, tenant=tenant, drift=ctx.services.features.has(s, "drift")
            )
    log.warning("tenant %s erased: %d job(s), %s", tenant, erased, removed)
    return TenantErasure(
        tenant=tenant,
        keys_revoked=revoked,
        jobs_erased=erased,
        waiting_on=waiting,
        removed=removed,
        done=not left,
    )
