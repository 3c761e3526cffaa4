"""Load on one API process over PostgreSQL: N concurrent clients (200 by default) poll job
status and page through results for a fixed time. Prints requests per second, p50/p99 latency
and the error count (target: zero errors, p99 under 200 ms here). A benchmark, not a test: the
API runs in its own process (`labelq serve`), the clients in this one, all on loopback.

The baseline, in the same run: the same clients against `/healthz` (no key, no database), the
floor one process of this stack reaches here; the ratio says how close the real mix comes.
Clients wait `--poll` seconds between rounds (0: as fast as answers come, the default).

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60] [--poll 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import (  # noqa: E402
    PORT,
    SPEC,
    create_scratch_database,
    drop_scratch_database,
    spawn,
    stop,
    wait_http,
)


async def results_round(
    http: aiohttp.ClientSession, job: str, latencies: list[float], errors: list[str]
) -> None:
    """One round of a client: the job's status, then up to three pages of its results
    following the cursor (the status polled again before each page)."""
    cursor = None
    for _ in range(3):
        await _get(http, f"/v1/jobs/{job}", latencies, errors)
        page = f"/v1/jobs/{job}/results?limit=50" + (f"&cursor={cursor}" if cursor else "")
        body = await _get(http, page, latencies, errors)
        cursor = body.get("next_cursor") if body else None
        if not cursor:
            return


async def healthz_round(
    http: aiohttp.ClientSession, job: str, latencies: list[float], errors: list[str]
) -> None:
    """The baseline's round: `/healthz` once (no key, no database)."""
    await _get(http, "/healthz", latencies, errors)


Round = Callable[[aiohttp.ClientSession, str, list[float], list[str]], Awaitable[None]]


async def client_loop(
    http: aiohttp.ClientSession,
    round_: Round,
    job_ids: list[str],
    until: float,
    poll: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    """One client: rounds over the jobs in turn until time is up, `poll` seconds apart; a
    round that fails at the connection is counted as an error and the next one starts."""
    n = 0
    while time.monotonic() < until:
        if n and poll:
            await asyncio.sleep(poll)
        job = job_ids[n % len(job_ids)]
        n += 1
        try:
            await round_(http, job, latencies, errors)
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__} (job {job})")


async def _get(
    http: aiohttp.ClientSession, path: str, latencies: list[float], errors: list[str]
) -> dict[str, Any] | None:
    start = time.perf_counter()
    async with http.get(path) as r:
        body = await r.read()
    latencies.append(time.perf_counter() - start)
    if r.status != 200:
        errors.append(f"{r.status} {path}")
        return None
    out: dict[str, Any] = json.loads(body)
    return out


def _api_key(db_url: str) -> str:
    from db.session import make_engine, make_sessionmaker
    from service import keys

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        key = keys.create(s, "bench-load").key
    engine.dispose()
    return key


async def load(
    round_: Round, url: str, job_ids: list[str], clients: int, seconds: float, key: str, poll: float
) -> tuple[list[float], list[str], float]:
    """`clients` concurrent clients, each on its own keep-alive connection. The clients use
    aiohttp (its parser is C): with httpx the load generator itself saturated a core at 32
    requests/s and its queueing was most of the latency measured."""
    latencies: list[float] = []
    errors: list[str] = []
    connector = aiohttp.TCPConnector(limit=clients, limit_per_host=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(
        base_url=url, connector=connector, timeout=timeout, headers=headers
    ) as http:
        start = time.monotonic()
        until = start + seconds
        await asyncio.gather(
            *(
                client_loop(http, round_, job_ids, until, poll, latencies, errors)
                for _ in range(clients)
            )
        )
        elapsed = time.monotonic() - start
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--items", type=int, default=500, help="items per job")
    parser.add_argument("--poll", type=float, default=0.0, help="seconds between rounds")
    args = parser.parse_args()

    from labelq.client import LabelqClient

    work = Path(tempfile.mkdtemp(prefix="labelq-bench-load-"))
    db_url = create_scratch_database()
    env = {
        "LABELQ_DATABASE_URL": db_url,
        "LABELQ_MODEL": "no-worker",  # jobs stay queued: reads only, no engine in the way
        "LABELQ_API_PORT": str(PORT),
        "LABELQ_SUBMISSIONS_PER_MINUTE": "100000",
    }
    url = f"http://127.0.0.1:{PORT}"
    runs: dict[str, tuple[list[float], list[str], float]] = {}
    try:
        api = spawn(["serve"], env, work / "api-setup.log")
        try:
            wait_http(url)
            with LabelqClient(url) as client:
                client.create_classifier(json.dumps(SPEC), yaml=False)
                items = [{"custom_id": f"i{i}", "text": f"review {i}"} for i in range(args.items)]
                job_ids = [client.submit("bench", items)["id"] for _ in range(args.jobs)]
        finally:
            stop(api)
        key = _api_key(db_url)  # as in production: every request carries a key
        api = spawn(["serve"], env, work / "api.log")
        try:
            wait_http(url)
            rounds: dict[str, Round] = {
                "baseline: /healthz": healthz_round,
                "status + results": results_round,
            }
            for label, round_ in rounds.items():
                runs[label] = asyncio.run(
                    load(round_, url, job_ids, args.clients, args.seconds, key, args.poll)
                )
        finally:
            stop(api)
    finally:
        drop_scratch_database(db_url)

    poll = f", {args.poll:g} s between rounds" if args.poll else ""
    print(
        f"\n{args.clients} clients{poll}, one API process on PostgreSQL, {args.seconds:.0f} s each:"
    )
    rates = {}
    for label, (latencies, errors, elapsed) in runs.items():
        if not latencies:
            raise SystemExit(f"{label}: no request succeeded; errors: {errors[:5]}")
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        first = f" (first: {errors[0]})" if errors else ""
        rates[label] = len(ms) / elapsed
        print(
            f"  {label:26s} {len(ms) / elapsed:7.0f} requests/s  p50 {statistics.median(ms):7.1f}"
            f" ms  p99 {p99:7.1f} ms  errors {len(errors)}{first}"
        )
    ratio = rates["status + results"] / rates["baseline: /healthz"]
    print(f"  requests/s, status + results / baseline: {ratio:.2f}")
    print("targets: 0 errors, p99 under 200 ms")


if __name__ == "__main__":
    main()
