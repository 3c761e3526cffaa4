"""Throughput of a scheduled pipeline: rows from a PostgreSQL table through a run (paged read,
job, worker, sink upsert) against the plain job path on the same rows (export to JSONL, submit,
wait, download the results), both on one `labelq worker` on the tiny model. Prints rows per
second and their ratio (target >= 0.9). A benchmark, not a test.

    .venv/bin/python bench/pipelines.py [--rows 100000] [--chunk-size 256]
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
    create_scratch_database,
    drop_scratch_database,
    sentences,
    service_env,
    spawn,
    stop,
    wait_http,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-size", type=int, default=256)
    args = parser.parse_args()

    import redis
    from sqlalchemy import create_engine, text

    from labelq.client import LabelqClient
    from labelq.demo_model import build_demo_model
    from labelq.settings import Settings
    from service import wiring
    from service.context import Ctx
    from service.pipelines import finish_runs

    work = Path(tempfile.mkdtemp(prefix="labelq-bench-pipelines-"))
    model = build_demo_model(Path(tempfile.gettempdir()) / "labelq-bench-tiny", "tiny")
    db_url = create_scratch_database()
    source_url = create_scratch_database()  # the source is a database of its own
    texts = sentences(args.rows)
    source = create_engine(source_url)
    with source.begin() as c:
        c.execute(text("CREATE TABLE articles (id BIGINT PRIMARY KEY, body TEXT)"))
        for start in range(0, args.rows, 10_000):
            c.execute(
                text("INSERT INTO articles (id, body) VALUES (:id, :body)"),
                [
                    {"id": i + 1, "body": texts[i]}
                    for i in range(start, min(start + 10_000, args.rows))
                ],
            )
    redis.Redis.from_url(REDIS).flushdb()
    connections = {"news": {"url": source_url, "write": True}}
    env = service_env(
        db_url, model, args.chunk_size, LABELQ_PIPELINE_CONNECTIONS=json.dumps(connections)
    )
    api = spawn(["serve"], env, work / "api.log")
    worker = spawn(["worker", "--loglevel", "WARNING"], env, work / "worker.log")
    system = Ctx.system(
        wiring.build(Settings(database_url=db_url, pipeline_connections=connections))
    )
    url = f"http://127.0.0.1:{PORT}"
    try:
        wait_http(url)
        client = LabelqClient(url, timeout=3600)
        client.create_classifier(json.dumps(SPEC), yaml=False)
        client.wait(client.submit("bench", [{"text": t} for t in texts[:64]])["id"], timeout=600)

        # 1. The plain job path: the rows out of the table, in as a job, the results out.
        start = time.perf_counter()
        with source.connect() as c, open(work / "rows.jsonl", "w", encoding="utf-8") as f:
            for row in c.execute(text("SELECT id, body FROM articles ORDER BY id")):
                f.write(json.dumps({"custom_id": str(row.id), "text": row.body}) + "\n")
        job = client.submit_jsonl(work / "rows.jsonl", "bench")
        job = client.wait(job["id"], poll=0.2, timeout=7200)
        client.results_jsonl(job["id"], work / "results.jsonl")
        plain = time.perf_counter() - start
        assert job["succeeded"] == args.rows, job

        # 2. The pipeline: a run, then its end (sink upsert, watermark) as the sweep does it.
        client.create_pipeline(
            {
                "name": "bench",
                "classifier": "bench",
                "schedule": {"every": 86400},
                "source": {
                    "kind": "sql",
                    "connection": "news",
                    "table": "articles",
                    "key": "id",
                    "watermark": "id",
                    "fields": {"text": "body"},
                },
                "sink": {"kind": "sql", "connection": "news", "table": "article_labels"},
            }
        )
        start = time.perf_counter()
        run = client.run_pipeline("bench")
        client.wait(run["job_id"], poll=0.2, timeout=7200)
        finish_runs(system)
        piped = time.perf_counter() - start
        run = client.pipeline_runs("bench", 1)[0]
        assert run["state"] == "succeeded" and run["rows_read"] == args.rows, run
        with source.connect() as c:
            assert c.execute(text("SELECT count(*) FROM article_labels")).scalar() == args.rows
    finally:
        stop(worker)
        stop(api)
        source.dispose()
        drop_scratch_database(db_url)
        drop_scratch_database(source_url)
        redis.Redis.from_url(REDIS).flushdb()

    print(f"\n{args.rows} rows, tiny random Llama, chunk size {args.chunk_size}, one worker")
    print(f"plain job path:  {args.rows / plain:8.1f} rows/s  ({plain:.1f} s)")
    print(f"pipeline run:    {args.rows / piped:8.1f} rows/s  ({piped:.1f} s)")
    print(f"pipeline / plain: {plain / piped:7.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
