"""Scale-out: items per second of one job with one worker on the model's queue, then with two
(the same job again, both workers loaded before it is sent), printed as a ratio.

What the ratio means here: these machines have 2 CPU cores and the CPU engine of each worker
already uses both (torch threads), so a second worker on the same box competes for the same
cores; the ratio shows what sharing a queue costs or gains in coordination (leases, claims,
broker round trips), not added compute. With one GPU per worker (or one machine per worker), each
worker brings its own compute, and the ratio approaches 2 until PostgreSQL writes or the API's
ingestion become the limit.

    .venv/bin/python bench/scale.py [--items 4000] [--chunk-size 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import (  # noqa: E402
    PORT,
    REDIS,
    SPEC,
    scratch_database,
    sentences,
    service_env,
    spawn,
    stop,
    wait_http,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--chunk-size", type=int, default=64)
    args = parser.parse_args()

    import redis

    from labelq.client import LabelqClient
    from labelq.demo_model import build_demo_model

    work = Path(tempfile.mkdtemp(prefix="labelq-bench-scale-"))
    model = build_demo_model(Path(tempfile.gettempdir()) / "labelq-bench-tiny", "tiny")
    items = [{"custom_id": str(i), "text": t} for i, t in enumerate(sentences(args.items))]
    redis.Redis.from_url(REDIS).flushdb()
    with scratch_database() as db_url:
        env = service_env(db_url, model, args.chunk_size, LABELQ_SUBMISSIONS_PER_MINUTE="10000")
        api = spawn(["serve"], env, work / "api.log")
        procs = [api]
        url = f"http://127.0.0.1:{PORT}"

        def start_worker(name: str) -> None:
            ready = work / f"{name}.ready"
            procs.append(
                spawn(
                    ["worker", "--loglevel", "WARNING"],
                    {**env, "LABELQ_READY_FILE": str(ready)},
                    work / f"{name}.log",
                )
            )
            deadline = time.monotonic() + 600
            while not ready.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not load its model; see {work}")
                time.sleep(0.5)

        def one_job(client: LabelqClient) -> float:
            start = time.perf_counter()
            job = client.submit("bench", items)
            job = client.wait(job["id"], poll=0.2, timeout=7200)
            assert job["succeeded"] == args.items, job
            return args.items / (time.perf_counter() - start)

        try:
            wait_http(url)
            client = LabelqClient(url, timeout=3600)
            client.create_classifier(json.dumps(SPEC), yaml=False)
            start_worker("worker-1")
            client.wait(client.submit("bench", items[:64])["id"], timeout=600)  # warm-up
            one = one_job(client)
            start_worker("worker-2")
            two = one_job(client)
        finally:
            for proc in reversed(procs):
                stop(proc)
            redis.Redis.from_url(REDIS).flushdb()

    print(f"\n{args.items} items, tiny random Llama, chunk size {args.chunk_size}, one queue")
    print(f"one worker:  {one:8.1f} items/s")
    print(f"two workers: {two:8.1f} items/s")
    print(f"ratio (two / one): {two / one:.2f}  (2 CPU cores shared by both engines: see above)")


if __name__ == "__main__":
    main()
