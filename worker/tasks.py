"""Celery tasks: thin wrappers that parse, call the core, and persist.

Start a worker with `labelq worker` (it picks the queue of its model).
"""

from __future__ import annotations

from functools import cache

from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.session import make_engine, make_sessionmaker
from labelq.settings import Settings
from worker.app import TASK_FIT_CALIBRATION, TASK_SCORE_CHUNK, make_celery
from worker.calibrate import apply_active_calibration, fit_calibration
from worker.chunks import process_chunk
from worker.engine import scorer_for

settings = Settings()
app = make_celery(settings)


@cache
def _factory() -> sessionmaker[Session]:
    return make_sessionmaker(make_engine(settings.resolved_database_url()))


@app.task(
    name=TASK_SCORE_CHUNK,
    autoretry_for=(OperationalError, DBAPIError, RedisConnectionError, ConnectionError),
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=8,
)
def score_chunk(job_id: str, seq: int) -> None:
    process_chunk(
        _factory(),
        lambda model: scorer_for(model, settings),
        job_id,
        seq,
        settings.max_chunk_attempts,
        calibrate=apply_active_calibration,
    )


@app.task(
    name=TASK_FIT_CALIBRATION,
    autoretry_for=(OperationalError, RedisConnectionError),
    retry_backoff=2,
    max_retries=5,
)
def fit_calibration_task(calibration_id: int) -> None:
    fit_calibration(_factory(), lambda model: scorer_for(model, settings), calibration_id)
