"""Session fixtures: a tiny random Llama model built on the spot, and one vLLM engine on it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelq.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Engine settings for tests: float32 so the engine agrees with a plain transformers forward pass
# to 1e-4, a small context so truncation can be exercised, little memory.
TEST_MAX_MODEL_LEN = 512


def engine_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "dtype": "float32",
        "max_model_len": TEST_MAX_MODEL_LEN,
        "kv_cache_gib": 1,
        "memory_fraction": 0.3,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labelq.demo_model import build_demo_model

    cache = os.environ.get("LABELQ_TEST_MODEL_DIR")
    path = Path(cache) if cache else tmp_path_factory.mktemp("models") / "tiny"
    return build_demo_model(path, "tiny")


@pytest.fixture(scope="session")
def vllm_backend(tiny_model: Path) -> Iterator[object]:
    from labelq.backends.vllm_backend import VllmBackend

    backend = VllmBackend(str(tiny_model), engine_settings())
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def per_candidate_backend(vllm_backend: object, tiny_model: Path) -> object:
    """The per-candidate strategy on the same engine (no second model load)."""
    from labelq.backends.vllm_backend import VllmBackend

    assert isinstance(vllm_backend, VllmBackend)
    backend = VllmBackend(str(tiny_model), vllm_backend.settings, strategy="per_candidate")
    backend._llm = vllm_backend.llm
    backend._tokenizer = vllm_backend.tokenizer
    return backend


# -- databases -----------------------------------------------------------------------------------
PG_ADMIN_URL = os.environ.get(
    "LABELQ_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"labelq_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database emptied."""
    from db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'labelq.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("pg_url")
    upgrade(url)
    yield url
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE items, chunks, jobs, calibrations, classifiers, api_keys "
                "RESTART IDENTITY CASCADE"
            )
        )
    engine.dispose()


@pytest.fixture
def factory(db_url: str) -> Iterator[object]:
    from db.session import make_engine, make_sessionmaker

    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `labelq ARGS...` in a fresh interpreter and return what it did (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "labelq.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
