"""The worker's Celery app, without a broker."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


def test_a_channel_closed_after_the_broker_went_away_is_a_connection_error() -> None:
    """A Redis restart with a task in flight: Celery closes the channel, kombu tries to give
    the unacked message back through a transport whose client is gone. That must be a
    connection error (Celery ignores those and reconnects), not the AttributeError that made
    Celery stop the worker as "unrecoverable"."""
    from kombu.common import ignore_errors
    from kombu.transport import redis as kombu_redis

    from worker.app import survive_broker_restarts

    survive_broker_restarts()
    survive_broker_restarts()  # once is enough: not wrapped twice
    gone = SimpleNamespace(connection=SimpleNamespace(client=None))
    with pytest.raises(kombu_redis.get_redis_ConnectionError()):
        kombu_redis.Channel._connparams(gone)
    transport = kombu_redis.Transport
    assert issubclass(kombu_redis.get_redis_ConnectionError(), transport.connection_errors)
    connection = SimpleNamespace(
        connection_errors=transport.connection_errors, channel_errors=transport.channel_errors
    )
    # What Celery's consumer does on a lost connection: the error is ignored, not raised
    # (this raised AttributeError before).
    ignore_errors(connection, kombu_redis.Channel._connparams, gone)
