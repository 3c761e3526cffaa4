"""Shared fixtures.

Fast tier (no vLLM, Redis or PostgreSQL): SQLite databases, the deterministic `FakeBackend`,
the API in-process with chunks scored inline. Slow tier (`-m slow`): a tiny random Llama built
on the spot and one vLLM engine on it for the session, PostgreSQL, Redis, worker processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from labelq.scoring import Scorer
from labelq.settings import Settings
from service import calibrations, wiring
from service.chunks import ChunkRunner
from service.context import Ctx, Services
from service.dispatch import Dispatcher

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
    # pre-ping: the end-to-end tests restart PostgreSQL, which cuts pooled connections.
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _empty_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE items, chunks, jobs, calibrations, classifiers, api_keys, workers, "
                "worker_loads, pipeline_runs, pipeline_files, pipelines, webhook_deliveries, locks "
                "RESTART IDENTITY CASCADE"
            )
        )
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database emptied
    (before and after: other modules share it)."""
    from db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'labelq.db'}"
        upgrade(url)
        yield url
        return
    url = request.getfixturevalue("pg_url")
    upgrade(url)
    _empty_postgres(url)
    yield url
    _empty_postgres(url)


def engine_at(url: str) -> Engine:
    """An engine on a test database, as `service.wiring` builds a process's."""
    return wiring.database_engine(Settings(database_url=url))


@pytest.fixture
def factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database (tests look at rows directly; the code under test gets
    its `Services` through `service.wiring`, on the same engine)."""
    engine = engine_at(db_url)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


# -- scorers -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fake_scorer() -> Scorer:
    from labelq.backends.fake import FakeBackend

    return Scorer(FakeBackend())


@pytest.fixture(params=["fake", pytest.param("vllm", marks=pytest.mark.slow)])
def scorer(request: pytest.FixtureRequest, fake_scorer: Scorer) -> Scorer:
    """The fake backend (fast tier) and the real engine on the tiny model (slow tier)."""
    if request.param == "fake":
        return fake_scorer
    return Scorer(request.getfixturevalue("vllm_backend"))


# -- the API in-process --------------------------------------------------------------------------
class InlineDispatcher:
    """Runs dispatched chunks and fits at once, in the request (the Celery path is in test_e2e).
    `hold` keeps them unrun (to look at queued jobs). `bind` it to the services it runs with."""

    def __init__(self, scorer: Scorer | None):
        self.scorer = scorer
        self.sent: list[Any] = []
        self.hold = scorer is None

    def bind(self, services: Services) -> None:
        self.ctx = Ctx.system(services)
        self.runner = ChunkRunner(self.ctx, self._scorer_for, "inline")

    def _scorer_for(self, _: str) -> Scorer:
        assert self.scorer is not None
        return self.scorer

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        self.sent.append((job_id, queue_name, seqs))
        if not self.hold:
            for seq in seqs:
                self.runner.run(job_id, seq)

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        self.sent.append(("fit", queue_name, [calibration_id]))
        if not self.hold:
            calibrations.fit(self.ctx, self._scorer_for, calibration_id)

    def ping(self) -> bool:
        return True


class Recorder:
    """A dispatcher that only records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[int]]] = []
        self.fits: list[int] = []

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        self.sent.append((job_id, list(seqs)))

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        self.fits.append(calibration_id)

    def ping(self) -> bool:
        return True


def services_of(
    factory: sessionmaker[Session], settings: Settings, dispatcher: Dispatcher | None = None
) -> Services:
    """The services of a process on the test's database (`factory`'s engine)."""
    engine = factory.kw["bind"]
    return wiring.services_on(engine, settings, dispatcher or Recorder())


def system(
    factory: sessionmaker[Session], settings: Settings, dispatcher: Dispatcher | None = None
) -> Ctx:
    """The system context on the test's database."""
    return Ctx.system(services_of(factory, settings, dispatcher))


def tenant_ctx(
    factory: sessionmaker[Session],
    settings: Settings,
    dispatcher: Dispatcher | None = None,
    tenant: str = "default",
) -> Ctx:
    """A tenant's context on the test's database."""
    return Ctx.of(services_of(factory, settings, dispatcher), tenant)


def make_client(
    factory: sessionmaker[Session], scorer: Scorer | None, **settings: Any
) -> tuple[TestClient, InlineDispatcher]:
    """The API on `factory` with an inline dispatcher; requests come from 127.0.0.1 with a
    loopback Host, and are served without a key (`labelq serve --no-auth`) unless `no_auth`
    is given False."""
    config = Settings(model="tiny-model", chunk_size=4, **{"no_auth": True, **settings})
    dispatcher = InlineDispatcher(scorer)
    services = services_of(factory, config, dispatcher)
    dispatcher.bind(services)
    app = create_app(services)
    client = TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 50000))
    return client, dispatcher


@pytest.fixture
def client(
    factory: sessionmaker[Session], scorer: Scorer
) -> Iterator[tuple[TestClient, InlineDispatcher]]:
    c, d = make_client(factory, scorer)
    with c:
        yield c, d


@pytest.fixture
def bare_client(factory: sessionmaker[Session]) -> Iterator[tuple[TestClient, InlineDispatcher]]:
    """No scorer: chunks stay queued (validation, auth, classifiers, cancel)."""
    c, d = make_client(factory, None)
    with c:
        yield c, d


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


def create_key(
    factory: sessionmaker[Session],
    name: str,
    tenant: str = "default",
    scopes: tuple[str, ...] = ("read", "submit", "calibrate", "admin"),
) -> str:
    """A new API key on the test's database, as `labelq keys create` makes one."""
    from service import keys

    body = keys.KeyCreate(name=name, tenant=tenant, scopes=list(scopes))
    return keys.create(system(factory, Settings()), body).key
