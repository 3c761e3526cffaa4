"""Load on one API process over PostgreSQL: N concurrent clients (200 by default) poll job
status and page through results for a fixed time. Prints requests per second, p50/p99 latency
and the error count (target: zero errors, p99 under 200 ms here). A benchmark, not a test: the
API runs in its own process (`labelq serve`), the clients in this one, all on loopback.

Three of every four jobs are scored first (with the fake backend, through the worker's own
chunk runner, so the stored results are what a worker writes); the rest stay queued. Runs:

- polling: each client, as `LabelqClient.wait` does, asks its job's status every `--poll`
  seconds (0.5, the client's default), and reads the next page of its results each time
  (following the cursor; from the start again at the end). The target is for this run.
- no pause: the same requests as fast as answers come. 200 clients with no pause measure
  throughput, not latency: by Little's law a 200 ms p99 needs well over 1,000 answers a
  second, which even the baseline does not reach here.
- baseline: `/healthz` (no key, no database) with no pause, the floor one process of this
  stack reaches here; "no pause" over it is the ratio printed.

Each run also prints the API process's CPU time per answer (from the kernel's count for that
process): steadier than latency on a noisy machine, and what decides how far one process goes.

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60] [--poll 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

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
    http: aiohttp.ClientSession, client: Client, latencies: list[float], errors: list[str]
) -> None:
    """One poll of a client: its job's status, then the next page of its results."""
    await _get(http, f"/v1/jobs/{client.job}", latencies, errors)
    cursor = client.cursor
    page = f"/v1/jobs/{client.job}/results?limit=50" + (f"&cursor={cursor}" if cursor else "")
    body = await _get(http, page, latencies, errors)
    client.cursor = body.get("next_cursor") if body else None


async def healthz_round(
    http: aiohttp.ClientSession, client: Client, latencies: list[float], errors: list[str]
) -> None:
    """The baseline's round: `/healthz` once (no key, no database)."""
    await _get(http, "/healthz", latencies, errors)


@dataclass
class Client:
    job: str
    cursor: str | None = None


Round = Callable[[aiohttp.ClientSession, Client, list[float], list[str]], Awaitable[None]]


async def client_loop(
    http: aiohttp.ClientSession,
    round_: Round,
    client: Client,
    until: float,
    poll: float,
    latencies: list[float],
    errors: list[str],
) -> None:
    """One client: rounds until time is up, `poll` seconds after each answer (as
    `LabelqClient.wait` sleeps); a round that fails at the connection is counted as an error
    and the next one starts. Clients start spread over the first `poll` seconds, as
    independent pollers would be."""
    await asyncio.sleep(random.uniform(0, poll))
    while time.monotonic() < until:
        try:
            await round_(http, client, latencies, errors)
        except (aiohttp.ClientError, TimeoutError) as exc:
            errors.append(f"{type(exc).__name__} (job {client.job})")
        await asyncio.sleep(poll)


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


def _score(db_url: str, job_ids: list[str]) -> None:
    """Score these jobs as a worker would, with the fake backend: every chunk through the
    worker's `ChunkRunner`, results written by its code."""
    from sqlalchemy import select

    from db.models import Chunk
    from labelq.backends.fake import FakeBackend
    from labelq.scoring import Scorer
    from labelq.settings import Settings
    from service import wiring
    from service.chunks import ChunkRunner
    from service.context import Ctx

    services = wiring.build(Settings(database_url=db_url, model="no-worker"))
    scorer = Scorer(FakeBackend())
    runner = ChunkRunner(Ctx.system(services), lambda _: scorer, "bench")
    for job_id in job_ids:
        with services.sessions() as s:
            seqs = list(s.scalars(select(Chunk.seq).where(Chunk.job_id == job_id)))
        for seq in seqs:
            runner.run(job_id, seq)
    wiring.close(services)


def _api_key(db_url: str) -> str:
    from labelq.settings import Settings
    from service import keys, wiring
    from service.context import Ctx

    services = wiring.build(Settings(database_url=db_url))
    body = keys.KeyCreate(name="bench-load", scopes=["read", "submit", "calibrate", "admin"])
    key = keys.create(Ctx.system(services), body).key
    wiring.close(services)
    return key


async def load(
    round_: Round, url: str, job_ids: list[str], clients: int, seconds: float, key: str, poll: float
) -> tuple[list[float], list[str], float]:
    """Latencies, errors and the elapsed time of one run."""
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
                client_loop(http, round_, Client(job), until, poll, latencies, errors)
                for job in itertools.islice(itertools.cycle(job_ids), clients)
            )
        )
        elapsed = time.monotonic() - start
    return latencies, errors, elapsed


POLLING = "polling: status + page"
NO_PAUSE = "no pause: status + page"
BASELINE = "baseline: /healthz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--items", type=int, default=500, help="items per job")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between polls")
    args = parser.parse_args()

    from labelq.client import LabelqClient

    work = Path(tempfile.mkdtemp(prefix="labelq-bench-load-"))
    db_url = create_scratch_database()
    env = {
        "LABELQ_DATABASE_URL": db_url,
        "LABELQ_MODEL": "no-worker",  # no worker runs: reads only, no engine in the way
        "LABELQ_API_PORT": str(PORT),
        "LABELQ_SUBMISSIONS_PER_MINUTE": "100000",
        # Setting up needs no key; the measured requests carry one, as in production.
        "LABELQ_NO_AUTH": "true",
    }
    url = f"http://127.0.0.1:{PORT}"
    runs: dict[str, tuple[list[float], list[str], float]] = {}
    cpu: dict[str, float] = {}  # the API process's CPU seconds in each run
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
        _score(db_url, job_ids[: len(job_ids) * 3 // 4])
        key = _api_key(db_url)  # as in production: every request carries a key
        api = spawn(["serve"], env, work / "api.log")
        try:
            wait_http(url)
            rounds: dict[str, tuple[Round, float]] = {
                POLLING: (results_round, args.poll),
                NO_PAUSE: (results_round, 0.0),
                BASELINE: (healthz_round, 0.0),
            }
            server = psutil.Process(api.pid)
            for label, (round_, poll) in rounds.items():
                before = sum(server.cpu_times()[:2])
                runs[label] = asyncio.run(
                    load(round_, url, job_ids, args.clients, args.seconds, key, poll)
                )
                cpu[label] = sum(server.cpu_times()[:2]) - before
        finally:
            stop(api)
    finally:
        drop_scratch_database(db_url)

    print(f"\n{args.clients} clients, one API process on PostgreSQL, {args.seconds:.0f} s each:")
    rates = {}
    for label, (latencies, errors, elapsed) in runs.items():
        if not latencies:
            raise SystemExit(f"{label}: no request succeeded; errors: {errors[:5]}")
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        first = f" (first: {errors[0]})" if errors else ""
        rates[label] = len(ms) / elapsed
        per_answer = cpu[label] / len(ms) * 1e6
        print(
            f"  {label:24s} {len(ms) / elapsed:7.0f} requests/s  p50 {statistics.median(ms):7.1f}"
            f" ms  p99 {p99:7.1f} ms  API CPU {per_answer:5.0f} us/request"
            f"  errors {len(errors)}{first}"
        )
    ratio = rates[NO_PAUSE] / rates[BASELINE]
    print(f"  requests/s, no pause / baseline: {ratio:.2f}")
    print("targets (polling): 0 errors, p99 under 200 ms")


if __name__ == "__main__":
    main()
