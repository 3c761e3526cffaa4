"""Property-based testing of the whole HTTP API from its own OpenAPI schema (Schemathesis):
bounded in examples, it sends what the schema allows and more, and checks that nothing ends in
a 5xx and that answers match the schema. On SQLite, with the fake backend."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy.orm import sessionmaker

from tests.conftest import create_key, make_client

SPEC = {
    "name": "schema",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory, fake_scorer: Any) -> Iterator[Any]:
    from db.migrate import upgrade
    from tests.conftest import engine_at

    url = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'labelq.db'}"
    upgrade(url)
    engine = engine_at(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    client, _ = make_client(factory, fake_scorer, submissions_per_minute=100_000)
    with client:
        client.post("/v1/classifiers", json=SPEC)
        client.post("/v1/jobs", json={"classifier": "schema", "items": [{"text": "a"}]})
        key = create_key(factory, "schemathesis")
        schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
        yield schema, {"Authorization": f"Bearer {key}"}
    engine.dispose()


def test_no_5xx_and_answers_match_the_schema(api_schema: Any) -> None:
    """Every operation, up to 15 generated requests each (Hypothesis, no example database)."""
    schema, headers = api_schema
    failures = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20, "the schema lists the API's routes"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                headers=headers,
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance],
            )

        try:
            check()
        except Exception as exc:  # collect them all: one report for every operation
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
