"""Load on one API process over PostgreSQL: N concurrent clients (200 by default) poll job
status and page through results for a fixed time. Prints requests per second, p50/p99 latency
and the error count (target: zero errors, p99 under 200 ms here). A benchmark, not a test: the
API runs in its own process (`labelq serve`), the clients in this one, all on loopback.

    .venv/bin/python bench/load.py [--clients 200] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

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


async def client_loop(
    http: object, job_ids: list[str], until: float, latencies: list[float], errors: list[str]
) -> None:
    import httpx

    assert isinstance(http, httpx.AsyncClient)
    n = 0
    while time.monotonic() < until:
        job = job_ids[n % len(job_ids)]
        n += 1
        paths = [f"/v1/jobs/{job}"]
        cursor = None
        for _ in range(3):  # three pages of results, following the cursor
            paths.append(
                f"/v1/jobs/{job}/results?limit=50" + (f"&cursor={cursor}" if cursor else "")
            )
            start = time.perf_counter()
            try:
                r = await http.get(paths[0])
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {paths[0]}")
                start = time.perf_counter()
                r = await http.get(paths[-1])
                latencies.append(time.perf_counter() - start)
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {paths[-1]}")
                    break
                cursor = r.json()["next_cursor"]
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__} {paths[-1]}")
                break
            if not cursor:
                break


def _api_key(db_url: str) -> str:
    from db.session import make_engine, make_sessionmaker
    from service import keys

    engine = make_engine(db_url)
    with make_sessionmaker(engine)() as s:
        key = keys.create(s, "bench-load").key
    engine.dispose()
    return key


async def load(
    url: str, job_ids: list[str], clients: int, seconds: float, key: str
) -> tuple[list[float], list[str], float]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, headers=headers) as http:
        start = time.monotonic()
        until = start + seconds
        await asyncio.gather(
            *(client_loop(http, job_ids, until, latencies, errors) for _ in range(clients))
        )
        elapsed = time.monotonic() - start
    return latencies, errors, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--items", type=int, default=500, help="items per job")
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
            runs["one API process"] = asyncio.run(
                load(url, job_ids, args.clients, args.seconds, key)
            )
        finally:
            stop(api)
    finally:
        drop_scratch_database(db_url)

    print(f"\n{args.clients} clients, one API process on PostgreSQL, {args.seconds:.0f} s each:")
    for label, (latencies, errors, elapsed) in runs.items():
        if not latencies:
            raise SystemExit(f"{label}: no request succeeded; errors: {errors[:5]}")
        ms = sorted(x * 1000 for x in latencies)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        first = f" (first: {errors[0]})" if errors else ""
        print(
            f"  {label:26s} {len(ms) / elapsed:7.0f} requests/s  p50 {statistics.median(ms):7.1f}"
            f" ms  p99 {p99:7.1f} ms  errors {len(errors)}{first}"
        )
    print("targets: 0 errors, p99 under 200 ms")


if __name__ == "__main__":
    main()
