"""How labelq grows on PostgreSQL: N days of traffic at a chosen rate, seeded straight into
the real tables (as `bench/dashboard.py` does: jobs of scored items with result JSON and the
dashboard's columns, 30% gold-labelled), then

- table and index sizes, and bytes per item;
- the time of the dashboard's queries, /metrics, a results page, the reconciler's chunk
  query and a chunk claim (median of `--runs`), before and after one retention pass
  (LABELQ_RETENTION results_days = half the days: the older half's inputs and results go;
  items_days = three quarters: the oldest quarter's rows go, their numbers to items_archive);
- the retention pass itself (rows a second);
- `labelq db upgrade` across every revision on that table: the database taken down to 0004
  (before the dashboard's columns) and up again, the schema steps and the backfill timed apart,
  with the longest wait of a writer updating an item row every 20 ms meanwhile (what the API,
  claims and chunk writes would wait).

    .venv/bin/python bench/growth.py [--days 30] [--items-per-day 33000] [--runs 3]

Times are absolute (one machine, one run): read them against each other, not as targets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dashboard import seed, timed  # noqa: E402
from pipeline import scratch_database  # noqa: E402

TABLES = ("items", "items_archive", "jobs", "chunks", "scored_counts")


class NoBroker:
    """Chunks are recorded, never sent: the claim below takes one by hand."""

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        pass

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        pass

    def ping(self) -> bool:
        return True


def sizes(engine: Any) -> dict[str, tuple[int, int]]:
    """table -> (table bytes with TOAST, index bytes)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return {
            t: (
                int(conn.execute(text(f"SELECT pg_table_size('{t}')")).scalar_one()),
                int(conn.execute(text(f"SELECT pg_indexes_size('{t}')")).scalar_one()),
            )
            for t in TABLES
        }


def spread(engine: Any, days: int) -> None:
    """The seeded jobs (and their items' scored_at) spread evenly over `days`, oldest first."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(
            text(
                "WITH ranked AS (SELECT id, row_number() OVER (ORDER BY created_at) - 1 AS k,"
                " count(*) OVER () AS n FROM jobs)"
                " UPDATE jobs SET created_at = now() - make_interval(days => :days)"
                " + (ranked.k::float / ranked.n) * make_interval(days => :days),"
                " finished_at = now() FROM ranked WHERE jobs.id = ranked.id"
            ),
            {"days": days},
        )
        conn.execute(
            text(
                "UPDATE items SET scored_at = jobs.created_at"
                " FROM jobs WHERE items.job_id = jobs.id"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def measure(c: Any, ctx: Any, job_ids: list[str], runs: int) -> dict[str, float]:
    from db import chunks
    from db.session import db_now
    from service import ingest
    from service.context import Ctx

    base = "/v1/classifiers/bench"

    def get(path: str) -> None:
        r = c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])

    out = {
        "reliability": timed(lambda: get(f"{base}/reliability"), runs),
        "timeseries (day)": timed(lambda: get(f"{base}/timeseries?bucket=day"), runs),
        "label distribution": timed(lambda: get(f"{base}/label-distribution?bucket=day"), runs),
        "/metrics": timed(lambda: get("/metrics"), runs),
        "results page (100)": timed(lambda: get(f"/v1/jobs/{job_ids[-1]}/results?limit=100"), runs),
    }
    system: Ctx = ctx

    def to_send() -> None:
        with system.reads() as s:
            now = db_now(s)
            chunks.chunks_to_send(s, now, now, served=["labelq.bench"])

    out["reconciler chunk query"] = timed(to_send, runs)
    tenant = Ctx.of(system.services, "default")
    request = ingest.JobRequest(classifier="bench")
    claims = []
    for _ in range(runs):
        from labelq.scoring import Item

        job_id = ingest.submit(tenant, request, [Item(fields={"text": "x"})])
        start = time.perf_counter()
        with system.tx() as s:
            assert chunks.claim_chunk(s, job_id, 0, "bench", lease_seconds=60, max_attempts=3)
        claims.append(time.perf_counter() - start)
    out["chunk claim"] = statistics.median(claims)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--items-per-day", type=int, default=33_000)
    parser.add_argument("--items-per-job", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from alembic import command
    from fastapi.testclient import TestClient

    from api.app import create_app
    from db.migrate import alembic_config, backfill, upgrade
    from labelq.settings import Settings
    from service import erase, wiring
    from service.context import Ctx

    per_job = min(args.items_per_job, args.days * args.items_per_day)
    jobs = max(1, args.days * args.items_per_day // per_job)
    total = jobs * per_job
    with scratch_database() as url:
        start = time.perf_counter()
        _, job_ids = seed(url, jobs, per_job)
        settings = Settings(
            database_url=url,
            model="bench",
            no_auth=True,  # in process, from loopback
            # the older half's content goes; the oldest quarter's item rows too (their
            # dashboard numbers kept in items_archive)
            retention={"*": {"results_days": args.days / 2, "items_days": args.days * 3 / 4}},
            erase_per_sweep=100_000,
            erase_batch=5_000,
            tenant_max_jobs=None,
            tenant_max_items=None,
        )
        engine = wiring.database_engine(settings)
        spread(engine, args.days)
        print(f"seeded {total:,} scored items ({jobs} jobs) over {args.days} days "
              f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
        services = wiring.services_on(engine, settings, NoBroker())
        ctx = Ctx.system(services)
        before_sizes = sizes(engine)
        app = create_app(services)
        with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 1)) as c:
            before = measure(c, ctx, job_ids, args.runs)
            start = time.perf_counter()
            rows = 0
            while True:
                report = erase.sweep(ctx)
                rows += report.rows
                if not report.rows and not report.marked:
                    break
            took = time.perf_counter() - start
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                from sqlalchemy import text

                conn.execute(text("VACUUM ANALYZE items"))
                conn.execute(text("VACUUM ANALYZE items_archive"))
                archived = conn.execute(text("SELECT count(*) FROM items_archive")).scalar_one()
            after = measure(c, ctx, job_ids, args.runs)
        after_sizes = sizes(engine)
        wiring.close(services)

        print(f"\nsizes ({total:,} items; after the retention pass and a plain VACUUM):")
        print(f"  {'table':14s} {'table MiB':>10s} {'index MiB':>10s} {'after':>16s}")
        for t in TABLES:
            (tb, ib), (ta, ia) = before_sizes[t], after_sizes[t]
            print(f"  {t:14s} {tb / 2**20:10.1f} {ib / 2**20:10.1f} "
                  f"{ta / 2**20:8.1f} {ia / 2**20:7.1f}")  # fmt: skip
        items_bytes = sum(before_sizes["items"])
        print(f"  bytes per item (items table + its indexes): {items_bytes / total:,.0f}")
        if archived:
            print(f"  bytes per archived item (items_archive + its indexes, {archived:,} rows): "
                  f"{sum(after_sizes['items_archive']) / archived:,.0f}")  # fmt: skip
        print(f"\nretention pass: {rows:,} item rows scrubbed or archived and deleted in "
              f"{took:.1f} s "
              f"({rows / took if took else 0:,.0f} rows/s)")  # fmt: skip
        print(f"\nmedian of {args.runs} (ms)      before    after")
        for name in before:
            print(f"  {name:24s} {before[name] * 1000:8.1f} {after[name] * 1000:8.1f}")

        command.downgrade(alembic_config(url), "0004")
        with Writer(url) as writer:
            start = time.perf_counter()
            upgrade(url, fill=False)
            schema, schema_wait = time.perf_counter() - start, writer.longest()
            start = time.perf_counter()
            filled = backfill(url)
            fill, fill_wait = time.perf_counter() - start, writer.longest()
        print(f"\ndb upgrade 0004 -> head on {total:,} items:")
        print(
            f"  schema steps: {schema:.1f} s, a writer's longest wait {schema_wait * 1000:.0f} ms"
        )
        print(f"  backfill: {filled:,} rows in {fill:.1f} s ({filled / fill if fill else 0:,.0f} "
              f"rows/s), a writer's longest wait {fill_wait * 1000:.0f} ms")  # fmt: skip


class Writer:
    """A writer updating one item row every 20 ms in its own short transaction, as the API
    and workers do during an upgrade; `longest` is its longest wait since the last call."""

    def __init__(self, url: str):
        from sqlalchemy import create_engine

        self.engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        self.stop = threading.Event()
        self.waits: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.engine.dispose()

    def _run(self) -> None:
        from sqlalchemy import text

        while not self.stop.is_set():
            start = time.perf_counter()
            with self.engine.begin() as conn:
                conn.execute(text("UPDATE items SET gold_label = gold_label WHERE id = 1"))
            self.waits.append(time.perf_counter() - start)
            time.sleep(0.02)

    def longest(self) -> float:
        waits, self.waits = self.waits, []
        return max(waits, default=0.0)


if __name__ == "__main__":
    main()
