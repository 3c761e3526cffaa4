"""`labelq db upgrade` started before its database takes connections (a compose stack
starting, an init container beside a restarting server) waits for it, up to --wait."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from sqlalchemy import create_engine, text


@pytest.mark.slow
def test_db_upgrade_waits_for_its_database_then_migrates() -> None:
    from tests.conftest import PG_ADMIN_URL

    name = f"labelq_late_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    env = {**os.environ, "LABELQ_DATABASE_URL": url}
    command = [sys.executable, "-m", "labelq.cli", "db", "upgrade", "--no-backfill"]
    proc = subprocess.Popen(
        [*command, "--wait", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        time.sleep(4)  # the database does not exist yet: every connection fails
        assert proc.poll() is None
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert f"waiting up to 60 s for the database at {url.split('@')[-1]}" in out
        assert "is at revision head" in out
        # Without the database for longer than --wait: it gives up, with the error.
        late = subprocess.run(
            [*command, "--wait", "2"], env={**env, "LABELQ_DATABASE_URL": url + "_none"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert late.returncode != 0 and "does not exist" in late.stdout + late.stderr
    finally:
        proc.kill()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
