"""Throughput of the service: API -> Redis -> Celery worker -> PostgreSQL, against the scorer
called directly on the same items in the same run; then ingestion rate and peak memory of a
100k-item JSONL upload, and the results export rate.

Needs Redis and PostgreSQL on loopback (deploy/test.sh starts them). A benchmark: it prints
ratios and rates and asserts nothing.

    .venv/bin/python bench/pipeline.py [--items 5000] [--upload-items 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "stsa.binary.train"
PG_ADMIN = os.environ.get(
    "LABELQ_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("LABELQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
SPEC = {
    "name": "bench",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good"], "negative": " negative"},
}
ENGINE_ENV = {"LABELQ_DTYPE": "float32", "LABELQ_MAX_MODEL_LEN": "512", "LABELQ_KV_CACHE_GIB": "1"}
PORT = 18000 + os.getpid() % 1000  # the API's port for this run


def service_env(db_url: str, model: Path | str, chunk_size: int, **extra: str) -> dict[str, str]:
    """Settings of the API and worker processes a benchmark starts (engine, database, broker,
    model, chunk size, port), plus `extra`."""
    return {
        **ENGINE_ENV,
        "LABELQ_DATABASE_URL": db_url,
        "LABELQ_BROKER_URL": REDIS,
        "LABELQ_MODEL": str(model),
        "LABELQ_CHUNK_SIZE": str(chunk_size),
        "LABELQ_API_PORT": str(PORT),
        "LABELQ_NO_AUTH": "true",  # the benchmark's own server, on loopback
        **extra,
    }


def create_scratch_database() -> str:
    """A new, migrated PostgreSQL database for one benchmark run; its URL."""
    from sqlalchemy import create_engine, text

    from db.migrate import upgrade

    name = f"labelq_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    return url


def drop_scratch_database(url: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


@contextmanager
def scratch_database() -> Iterator[str]:
    url = create_scratch_database()
    try:
        yield url
    finally:
        drop_scratch_database(url)


def sentences(n: int) -> list[str]:
    pool = [line.split(" ", 1)[1] for line in SST2.read_text(encoding="utf-8").splitlines()]
    return [pool[i % len(pool)] for i in range(n)]


def write_jsonl(path: Path, texts: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"custom_id": f"b{i}", "text": text}) + "\n")


def peak_rss_mib(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    values = {
        line.split(":")[0]: line.split()[1]
        for line in status.splitlines()
        if line.startswith(("VmRSS:", "VmHWM:"))
    }
    return int(values["VmRSS"]) / 1024, int(values["VmHWM"]) / 1024


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "labelq.cli", *args],
        env={**os.environ, **env},
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_http(url: str) -> None:
    import httpx

    for _ in range(200):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("API did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--upload-items", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument(
        "--model-size",
        choices=["tiny", "bench"],
        default="bench",
        help="bench: the ~30M-parameter model of bench/scoring.py",
    )
    parser.add_argument("--pool", choices=["threads", "solo"], default="threads")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import redis

    from labelq.backends.vllm_backend import VllmBackend
    from labelq.client import LabelqClient
    from labelq.demo_model import build_demo_model
    from labelq.scoring import Item, Scorer
    from labelq.settings import Settings
    from labelq.spec import parse_spec

    work = Path(tempfile.mkdtemp(prefix="labelq-bench-"))
    model = build_demo_model(
        Path(tempfile.gettempdir()) / f"labelq-bench-{args.model_size}", args.model_size
    )
    db_url = create_scratch_database()
    redis.Redis.from_url(REDIS).flushdb()
    # LABELQ_MODELS: the ingest-only classifier's model
    env = service_env(db_url, model, args.chunk_size, LABELQ_MODELS='["no-worker"]')
    api = spawn(["serve"], env, work / "api.log")
    worker = spawn(
        ["worker", "--pool", args.pool, "--loglevel", "WARNING"], env, work / "worker.log"
    )
    url = f"http://127.0.0.1:{PORT}"
    texts = sentences(args.items)
    try:
        wait_http(url)
        client = LabelqClient(url, timeout=600)
        client.create_classifier(json.dumps(SPEC), yaml=False)
        # Warm the worker (model load, first batch) before timing anything.
        client.wait(client.submit("bench", [{"text": t} for t in texts[:64]])["id"], timeout=600)

        # 1. Direct: the scorer in this process, same items, same batch size as a chunk.
        backend = VllmBackend(
            str(model),
            Settings(**{k.removeprefix("LABELQ_").lower(): v for k, v in ENGINE_ENV.items()}),
        )
        scorer = Scorer(backend)
        spec = parse_spec(SPEC)
        scorer.score(spec, [Item(fields={"text": t}) for t in texts[:64]], batch_size=64)  # warm
        start = time.perf_counter()
        scorer.score(spec, [Item(fields={"text": t}) for t in texts], batch_size=args.chunk_size)
        direct = time.perf_counter() - start
        backend.close()

        # 2. Through the service: upload, queue, worker, database, until the job has finished.
        write_jsonl(work / "items.jsonl", texts)
        start = time.perf_counter()
        job = client.submit_jsonl(work / "items.jsonl", "bench")
        job = client.wait(job["id"], poll=0.2, timeout=3600)
        service = time.perf_counter() - start
        assert job["succeeded"] == args.items, job

        start = time.perf_counter()
        exported = client.results_jsonl(job["id"], work / "results.jsonl")
        export_scored = time.perf_counter() - start
        stop(worker)

        # 3. Ingestion of a large upload (no worker listens to its queue) and its export.
        write_jsonl(work / "big.jsonl", sentences(args.upload_items))
        client.create_classifier(
            json.dumps({**SPEC, "name": "bench-ingest", "model": "no-worker"}), yaml=False
        )
        rss_before, _ = peak_rss_mib(api.pid)
        start = time.perf_counter()
        big = client.submit_jsonl(work / "big.jsonl", "bench-ingest")
        ingest = time.perf_counter() - start
        _, peak = peak_rss_mib(api.pid)
        start = time.perf_counter()
        exported_big = client.results_jsonl(big["id"], work / "big-results.jsonl")
        export_big = time.perf_counter() - start
        client.cancel(big["id"])
    finally:
        stop(worker)
        stop(api)
        drop_scratch_database(db_url)
        redis.Redis.from_url(REDIS).flushdb()

    print(
        f"\n{args.items} SST-2 items, {args.model_size} random Llama, chunk size "
        f"{args.chunk_size}, worker pool {args.pool}"
    )
    print(f"direct scorer:      {args.items / direct:8.1f} items/s  ({direct:.1f} s)")
    print(f"through the service:{args.items / service:8.1f} items/s  ({service:.1f} s)")
    print(f"service / direct:   {direct / service:8.3f}  (target >= 0.9)")
    print(f"export (scored):    {exported / export_scored:8.0f} rows/s ({exported} rows)")
    print(
        f"\nupload of {args.upload_items} items: {args.upload_items / ingest:8.0f} items/s "
        f"({ingest:.1f} s); API RSS {rss_before:.0f} MiB before, peak {peak:.0f} MiB"
    )
    print(
        f"export of {exported_big} rows:  {exported_big / export_big:8.0f} rows/s "
        f"({export_big:.1f} s)"
    )


if __name__ == "__main__":
    main()
