"""A rolling upgrade as it happens: a worker of the previous release (its code taken from git
history, run in a process of its own with the tiny vLLM model) is scoring when this release's
`labelq db upgrade` runs; this release's API then takes a job, and the old worker scores it
on the new schema. Its results, the dashboard and /metrics must be whole: the new revisions
only add, and the task the new API sends has the shape the old worker knows (`v` 1).

The previous release is the newest landed commit before this release's first revision
(`PREVIOUS_RELEASE`, whose head revision is 0020). Its own start-up check wants the exact
revision, which is why it starts on 0020 and meets the upgrade while running, as a pod does
mid-rollout; releases from this one on start on any schema in their compatible range
(`db.migrate.compatibility`, tested in `tests/test_upgrade.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_MAX_MODEL_LEN
from tests.test_e2e import SPEC, TIMERS, RedisServer, _wait_for
from tests.test_pipelines import scratch_postgres

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PREVIOUS_RELEASE = "d8532c7ce9bef86730dfd3e232aaab4d41cb10e2"
PREVIOUS_HEAD = "0020"


def _checkout(commit: str, into: Path) -> Path:
    """The tree of `commit` in a folder (needs the repository's history: a clone, not an
    export)."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True
    )
    assert found.returncode == 0, (
        f"commit {commit} is not in this clone's history: the previous-release test needs it "
        "(fetch the full history, not a shallow clone)"
    )
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _old(tree: Path, args: list[str], env: dict[str, str], **kwargs: Any) -> Any:
    """`labelq ARGS` from the old tree: its folder first on the path, and as the working
    directory (`python -m` puts the working directory before PYTHONPATH)."""
    return dict(
        args=[sys.executable, "-m", "labelq.cli", *args],
        cwd=tree,
        env={**env, "PYTHONPATH": str(tree)},
        **kwargs,
    )


@pytest.fixture
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkout(PREVIOUS_RELEASE, tmp_path_factory.mktemp("release") / "previous")


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_postgres() as url:
        yield url


def test_a_previous_release_worker_scores_a_job_of_the_new_api_after_the_upgrade(
    old_tree: Path, database: str, tiny_model: Path, tmp_path: Path
) -> None:
    from api.app import create_app
    from api.server import BackgroundServer
    from db.migrate import require_current, upgrade
    from labelq.client import LabelqClient
    from labelq.settings import Settings
    from service import wiring

    redis = RedisServer(tmp_path)
    redis.start()
    # The old release's own environment: not this process's engine logging config, which
    # names classes of this release (a pod of the old release never sees it).
    inherited = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_CONFIG_PATH"}
    env = {
        **inherited,
        **TIMERS,
        "LABELQ_DATABASE_URL": database,
        "LABELQ_BROKER_URL": redis.url,
        "LABELQ_MODEL": str(tiny_model),
        "LABELQ_DTYPE": "float32",
        "LABELQ_MAX_MODEL_LEN": str(TEST_MAX_MODEL_LEN),
        "LABELQ_KV_CACHE_GIB": "1",
        "LABELQ_HOME": str(tmp_path / "home"),
        "LABELQ_READY_FILE": str(tmp_path / "old.ready"),
    }
    migrated = subprocess.run(
        **_old(old_tree, ["db", "upgrade"], env, capture_output=True, text=True, timeout=300)
    )
    assert migrated.returncode == 0, migrated.stderr
    where = subprocess.run(
        [sys.executable, "-c", "import labelq, service; print(service.__file__)"],
        cwd=old_tree,
        env={**env, "PYTHONPATH": str(old_tree)},
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(old_tree)), where  # the old code runs
    log = open(tmp_path / "old-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        **_old(
            old_tree,
            ["worker", "--loglevel", "WARNING"],
            env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        ready = Path(env["LABELQ_READY_FILE"])
        try:
            _wait_for(ready.exists, 300, "the old worker's model")
        except AssertionError:
            log.flush()
            tail = (tmp_path / "old-worker.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"the old worker never became ready:\n{tail}") from None
        # This release's migrations run under the running worker, backfill included.
        upgrade(database)
        assert require_current(database) is None
        settings = Settings(
            database_url=database,
            broker_url=redis.url,
            model=str(tiny_model),
            chunk_size=64,
            no_auth=True,  # the test's own server, on loopback
            metrics_classifier_labels=True,
        )
        app = create_app(wiring.build_api(settings))
        with BackgroundServer(app) as server, LabelqClient(server.url) as client:
            client.create_classifier(json.dumps(SPEC), yaml=False)
            items = [
                {"custom_id": f"r{i}", "text": f"review {i}: " + "warm " * (i % 7)}
                for i in range(150)
            ]
            job = client.wait(client.submit("e2e", items)["id"], timeout=600)
            assert (job["state"], job["succeeded"], job["failed"]) == ("succeeded", 150, 0), job
            assert len(job["fingerprints"]) == 1, job  # the old worker's engine, recorded
            rows = list(client.results(job["id"], limit=100))
            assert [r["custom_id"] for r in rows] == [it["custom_id"] for it in items]
            gold = {r["custom_id"]: r["label"] for r in rows[:100]}
            client.set_labels(job["id"], gold)
            reliability = httpx.get(
                f"{server.url}/v1/classifiers/e2e/reliability", params={"job": job["id"]}
            ).json()
            assert reliability["n"] == 100  # the columns the old worker wrote, as the new reads
            counts = [
                sample.value
                for family in text_string_to_metric_families(
                    httpx.get(f"{server.url}/metrics").text
                )
                for sample in family.samples
                if sample.name == "labelq_confidence_count"
                and sample.labels.get("classifier") == "e2e"
            ]
            assert counts == [150]
        assert worker.poll() is None, "the old worker died on the new schema"
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        redis.stop()
    text = (tmp_path / "old-worker.log").read_text(errors="replace")
    assert "Traceback" not in text and "refus" not in text.lower(), text[-3000:]
