"""The README's backup, done as it says: `pg_dump -Fc` of labelq's database while it serves,
restored into another database, which this release then serves whole (the job, its results,
its calibration's readings) and goes on with (a new job on it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from db.migrate import require_current
from tests.conftest import make_client
from tests.test_pipelines import scratch_postgres

SPEC = {"name": "c", "template": "{{ text }}", "labels": {"a": " a", "b": " b"}}


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs PostgreSQL's client tools")
def test_a_dump_restored_elsewhere_is_served_whole(
    pg_url: str, fake_scorer: object, tmp_path: Path
) -> None:
    from sqlalchemy.orm import sessionmaker

    from db.migrate import upgrade
    from tests.conftest import _empty_postgres, engine_at

    upgrade(pg_url)
    _empty_postgres(pg_url)
    engine = engine_at(pg_url)
    client, _ = make_client(sessionmaker(engine), fake_scorer)  # type: ignore[arg-type]
    items = [{"custom_id": str(i), "text": f"t{i}", "label": "ab"[i % 2]} for i in range(40)]
    with client:
        assert client.post("/v1/classifiers", json=SPEC).status_code == 201
        job = client.post("/v1/jobs", json={"classifier": "c", "items": items}).json()
        before = client.get(f"/v1/jobs/{job['id']}/results", params={"limit": 100}).json()
        answer = client.get("/v1/classifiers/c/reliability")
        assert answer.status_code == 200, answer.text
        reliability = answer.json()
    assert len(before["data"]) == 40
    dump = tmp_path / "labelq.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), _libpq(pg_url)], check=True)
    _empty_postgres(pg_url)  # the original is lost
    engine.dispose()

    with scratch_postgres() as restored:
        subprocess.run(["pg_restore", "--no-owner", "-d", _libpq(restored), str(dump)], check=True)
        assert require_current(restored) is None  # this release serves it as it is
        engine = engine_at(restored)
        client, _ = make_client(sessionmaker(engine), fake_scorer)  # type: ignore[arg-type]
        with client:
            after = client.get(f"/v1/jobs/{job['id']}/results", params={"limit": 100}).json()
            assert after["data"] == before["data"]
            assert client.get("/v1/classifiers/c/reliability").json() == reliability
            again = client.post("/v1/jobs", json={"classifier": "c", "items": items}).json()
            assert client.get(f"/v1/jobs/{again['id']}").json()["succeeded"] == 40
        engine.dispose()
