"""Hostile and broken input: refused with a 4xx naming what is wrong, never a 500, and nothing
already accepted lost. Each row of BAD is a request, the status it must get and a fragment of
its message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import create_key, make_client, system

SPEC = {
    "name": "hostile",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}
NDJSON = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def api(factory: Any, fake_scorer: Any) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    c, _ = make_client(
        factory,
        fake_scorer,
        models=["alias=/models/real"],
        max_body_bytes=1_000_000,
        max_line_bytes=2_000,
        max_items_per_job=50,
        max_fields_per_item=5,
        submissions_per_minute=1000,
    )
    with c:
        assert c.post("/v1/classifiers", json=SPEC).status_code == 201
        job = c.post(
            "/v1/jobs", json={"classifier": "hostile", "items": [{"custom_id": "a", "text": "x"}]}
        ).json()
        yield c, {"job": job["id"]}


def _spec(**changes: Any) -> dict[str, Any]:
    return {**SPEC, "name": "other", **changes}


BAD: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (what, method+path, request kwargs, status, message fragment)
    ("bad JSON spec", "POST /v1/classifiers", {"content": b"{nope"}, 422, "cannot parse"),
    ("empty spec", "POST /v1/classifiers", {"content": b""}, 422, "empty body"),
    ("spec not a mapping", "POST /v1/classifiers", {"json": [1, 2]}, 422, "mapping"),
    ("unknown spec field", "POST /v1/classifiers", {"json": _spec(colour=1)}, 422, "colour"),
    ("one label", "POST /v1/classifiers", {"json": _spec(labels={"a": " a"})}, 422, "two labels"),
    ("bad name", "POST /v1/classifiers", {"json": _spec(name="Bad Name")}, 422, "name"),
    ("model not served", "POST /v1/classifiers", {"json": _spec(model="/etc")}, 422, "not served"),
    (
        "sandbox escape",
        "POST /v1/classifiers",
        {"json": _spec(template="{{ ''.__class__.__mro__[1].__subclasses__() }} {{ text }}")},
        422,
        "sandbox",
    ),
    ("template syntax", "POST /v1/classifiers", {"json": _spec(template="{{ x")}, 422, "syntax"),
    ("unknown classifier", "GET /v1/classifiers/nope", {}, 404, "does not exist"),
    ("job body not JSON", "POST /v1/jobs", {"content": b"{nope"}, 422, "invalid job body"),
    ("items not a list", "POST /v1/jobs", {"json": {"classifier": "hostile", "items": 3}}, 422,
     "valid array"),
    ("unknown classifier job", "POST /v1/jobs", {"json": {"classifier": "x", "items": []}}, 404,
     "does not exist"),
    ("unknown version", "POST /v1/jobs", {"json": {"classifier": "hostile", "version": 9,
     "items": []}}, 404, "version 9"),
    ("JSONL without classifier", "POST /v1/jobs", {"content": b"{}", "headers": NDJSON}, 422,
     "classifier"),
    ("too many items", "POST /v1/jobs", {"json": {"classifier": "hostile",
     "items": [{"text": "x"}] * 51}}, 413, "at most 50 items"),
    ("body too large", "POST /v1/jobs", {"content": b"x" * 1_000_001}, 413, "request body over"),
    ("unknown job", "GET /v1/jobs/nope", {}, 404, "does not exist"),
    ("cancel unknown job", "POST /v1/jobs/nope/cancel", {}, 404, "does not exist"),
    ("results of unknown job", "GET /v1/jobs/nope/results", {}, 404, "does not exist"),
    ("bad results format", "GET /v1/jobs/{job}/results?format=xml", {}, 422, "format"),
    ("tampered cursor", "GET /v1/jobs/{job}/results?cursor=abc", {}, 422, "cursor"),
    ("bad limit", "GET /v1/jobs/{job}/results?limit=0", {}, 422, "limit"),
    ("bad calibration", "GET /v1/jobs/{job}/results?calibration=x", {}, 422, "calibration"),
    ("unknown calibration", "GET /v1/jobs/{job}/results?calibration=999", {}, 404,
     "calibration 999"),
    ("labels not JSON", "POST /v1/jobs/{job}/labels", {"content": b"{x"}, 422, "invalid JSON"),
    ("labels a number", "POST /v1/jobs/{job}/labels", {"json": 5}, 422, "send an object"),
    ("metrics without labels", "GET /v1/jobs/{job}/metrics", {}, 409, "gold label"),
    ("unknown method", "POST /v1/classifiers/hostile/calibrations",
     {"json": {"method": "magic", "job_id": "{job}"}}, 422, "unknown method"),
    ("bad holdout", "POST /v1/classifiers/hostile/calibrations",
     {"json": {"method": "temperature", "holdout": 2}}, 422, "holdout"),
    ("calibration of unknown job", "POST /v1/classifiers/hostile/calibrations",
     {"json": {"method": "temperature", "job_id": "nope"}}, 404, "does not exist"),
    ("unknown pipeline", "GET /v1/pipelines/nope", {}, 404, "does not exist"),
    ("pipeline not a mapping", "POST /v1/pipelines", {"json": [1]}, 422, ""),
    ("dashboard of unknown classifier", "GET /v1/classifiers/nope/reliability", {}, 404,
     "does not exist"),
    ("dashboard unknown version", "GET /v1/classifiers/hostile/reliability?version=9", {}, 422,
     "no version 9"),
    ("dashboard bad calibration", "GET /v1/classifiers/hostile/confusion?calibration=x", {},
     422, "calibration must be"),
    ("dashboard unknown calibration", "GET /v1/classifiers/hostile/confusion?calibration=999",
     {}, 404, "calibration 999"),
    ("dashboard bad time", "GET /v1/classifiers/hostile/timeseries?from=yesterday", {}, 422,
     "from"),
    ("dashboard from after to", "GET /v1/classifiers/hostile/timeseries?from=2026-02-01&"
     "to=2026-01-01", {}, 422, "before"),
    ("dashboard bad bucket", "GET /v1/classifiers/hostile/timeseries?bucket=week", {}, 422,
     "bucket"),
    ("dashboard unknown metric", "GET /v1/classifiers/hostile/timeseries?metrics=ece,magic", {},
     422, "magic"),
    ("dashboard zero bins", "GET /v1/classifiers/hostile/reliability?bins=0", {}, 422, "bins"),
    ("dashboard bad binning", "GET /v1/classifiers/hostile/reliability?binning=log", {}, 422,
     "binning"),
    ("dashboard bad thresholds", "GET /v1/classifiers/hostile/selective?thresholds=a,b", {}, 422,
     "thresholds"),
    ("dashboard threshold above 1", "GET /v1/classifiers/hostile/selective?thresholds=2", {}, 422,
     "thresholds"),
    ("dashboard bad target", "GET /v1/classifiers/hostile/selective?target_accuracy=0", {}, 422,
     "target_accuracy"),
    ("dashboard compare one", "GET /v1/classifiers/hostile/compare?compare=none", {}, 422,
     "compare"),
    ("dashboard unknown job", "GET /v1/classifiers/hostile/confusion?job=nope", {}, 404,
     "does not exist"),
    ("dashboard from after to with a reference", "GET /v1/classifiers/hostile/"
     "label-distribution?from=2026-02-01&to=2026-01-01&reference_from=2025-01-01", {}, 422,
     "before"),
    ("dashboard reference reversed", "GET /v1/classifiers/hostile/label-distribution?"
     "reference_from=2026-02-01&reference_to=2026-01-01", {}, 422, "reference_from"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "route", "kwargs", "status", "words"), BAD, ids=[row[0] for row in BAD]
)
def test_bad_input_is_a_4xx_naming_it(
    api: tuple[TestClient, dict[str, Any]],
    what: str,
    route: str,
    kwargs: dict[str, Any],
    status: int,
    words: str,
) -> None:
    c, ids = api
    method, path = route.split(" ", 1)
    if "json" in kwargs:
        kwargs = {
            **kwargs,
            "json": json.loads(json.dumps(kwargs["json"]).replace("{job}", ids["job"])),
        }
    r = c.request(method, path.replace("{job}", ids["job"]), **kwargs)
    assert r.status_code == status, (what, r.status_code, r.text)
    assert words in r.text, (what, r.text)


def test_bad_lines_fail_alone_and_the_rest_is_kept(api: tuple[TestClient, Any]) -> None:
    c, _ = api
    bomb = b"[" * 100_000 + b"]" * 100_000
    lines = [
        b'{"custom_id": 1, "text": "fine"}',
        b'{"custom_id": 2, "text": "caf\xe9"}',  # latin-1, not UTF-8
        bomb,  # over the line limit and nested 100,000 deep
        b'{"custom_id": 4, "text": ' + b"[" * 40 + b"]" * 40 + b"}",  # nested too deep
        b'{"custom_id": 5, "text": "x", "a": 1, "b": 2, "c": 3, "d": 4, "e": 5}',  # fields
        b'{"custom_id": 6, "text": "also fine"}',
    ]
    r = c.post(
        "/v1/jobs",
        params={"classifier": "hostile"},
        content=b"\n".join(lines),
        headers=NDJSON,
    )
    assert r.status_code == 202, r.text
    rows = c.get(f"/v1/jobs/{r.json()['id']}/results").json()["data"]
    assert [row["status"] for row in rows] == [
        "succeeded",
        "failed",
        "failed",
        "failed",
        "failed",
        "succeeded",
    ]
    assert "UTF-8" in rows[1]["error"] and rows[1]["line"] == 2
    assert "longer than 2000 bytes" in rows[2]["error"] and rows[2]["line"] == 3
    assert "nested deeper" in rows[3]["error"] and rows[3]["line"] == 4
    assert "fields" in rows[4]["error"]


def test_a_nesting_bomb_under_the_line_limit_fails_its_line(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        bomb = b"[" * 100_000 + b"]" * 100_000  # 200 kB: under the default 1 MiB line limit
        body = b'{"text": "ok"}\n' + bomb + b'\n{"text": "ok too"}\n'
        r = c.post("/v1/jobs", params={"classifier": "hostile"}, content=body, headers=NDJSON)
        assert r.status_code == 202, r.text
        rows = c.get(f"/v1/jobs/{r.json()['id']}/results").json()["data"]
        assert [row["status"] for row in rows] == ["succeeded", "failed", "succeeded"]
        assert "nested deeper" in rows[1]["error"]


def test_submissions_are_rate_limited_per_key(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer, submissions_per_minute=2)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        body = {"classifier": "hostile", "items": [{"text": "x"}]}
        assert c.post("/v1/jobs", json=body).status_code == 202
        assert c.post("/v1/jobs", json=body).status_code == 202
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 429 and 0 < int(r.headers["Retry-After"]) <= 60
        assert "submissions a minute" in r.json()["error"]
        assert c.get("/v1/jobs").status_code == 200  # reading is not a submission


def test_a_model_alias_is_allowed(api: tuple[TestClient, Any]) -> None:
    c, _ = api
    r = c.post("/v1/classifiers", json=_spec(name="aliased", model="alias"))
    assert r.status_code == 201, r.text
    job = c.post("/v1/jobs", json={"classifier": "aliased", "items": [{"text": "x"}]}).json()
    assert job["model"] == "/models/real"


def test_a_key_revoked_elsewhere_is_refused_once_the_trust_runs_out(
    factory: Any, fake_scorer: Any
) -> None:
    """A key revoked by another process (here: straight in the database, as `labelq keys
    revoke` does) is refused by the next request with LABELQ_KEY_CACHE_SECONDS=0, and by
    `TrustedKeys` only after its time is up; a wrong key is never trusted."""
    from labelq.settings import Settings
    from service import keys
    from service.keys import TrustedKeys

    create_key(factory, "operator")  # a key stays: with none, loopback is served keyless
    made = create_key(factory, "poller")
    headers = {"Authorization": f"Bearer {made}"}
    c, _ = make_client(factory, fake_scorer, key_cache_seconds=0)
    with c:
        assert c.get("/v1/jobs", headers=headers).status_code == 200
        poller = next(k for k in keys.listed(system(factory, Settings())) if k.name == "poller")
        keys.revoke(system(factory, Settings()), poller.id)  # as `labelq keys revoke` does
        assert c.get("/v1/jobs", headers=headers).status_code == 401

    now = [0.0]
    trusted = TrustedKeys(5, timer=lambda: now[0])
    who = keys.Principal("default", frozenset({"read"}), key_id=7)
    trusted.put("k1", who)
    trusted.put("wrong", keys.Principal("default", frozenset()))  # no key id: never kept
    now[0] = 4.9
    assert trusted.get("k1") == who and trusted.get("wrong") is None
    now[0] = 5.1
    assert trusted.get("k1") is None
    trusted.put("k1", who)
    trusted.forget(7)  # revoked through this process
    assert trusted.get("k1") is None
    assert TrustedKeys(0).get("k1") is None


def test_scopes_and_tenants_are_isolated(factory: Any, fake_scorer: Any) -> None:
    root = create_key(factory, "operator")  # default tenant, every scope
    c, _ = make_client(factory, fake_scorer, no_auth=False)

    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    with c:
        assert c.get("/v1/jobs").status_code == 401  # no key: no service
        made = {}
        for name, tenant, scopes in [
            ("a-writer", "acme", ["read", "submit"]),
            ("a-reader", "acme", ["read"]),
            ("b-writer", "bolt", ["read", "submit"]),
        ]:
            r = c.post(
                "/v1/keys",
                json={"name": name, "tenant": tenant, "scopes": scopes},
                headers=auth(root),
            )
            assert r.status_code == 201, r.text
            made[name] = r.json()["key"]
        a, a_read, b = (auth(made[k]) for k in ("a-writer", "a-reader", "b-writer"))
        bad = c.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=auth(root))
        assert bad.status_code == 422 and bad.json()["field"] == "scopes"
        assert (
            c.post("/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=a).status_code == 403
        )

        assert c.post("/v1/classifiers", json=SPEC, headers=a).status_code == 201
        body = {"classifier": "hostile", "items": [{"custom_id": "k", "text": "x"}]}
        job = c.post("/v1/jobs", json=body, headers=a).json()
        r = c.post("/v1/jobs", json=body, headers=a_read)
        assert r.status_code == 403 and "'submit' scope" in r.json()["error"]
        assert c.get(f"/v1/jobs/{job['id']}", headers=a_read).status_code == 200

        # Tenant B sees nothing of A's, by id or by listing; a 404, as for what does not exist.
        jid = job["id"]
        for method, path, kwargs in [
            ("GET", f"/v1/jobs/{jid}", {}),
            ("GET", f"/v1/jobs/{jid}/results", {}),
            ("GET", f"/v1/jobs/{jid}/results?format=jsonl", {}),
            ("POST", f"/v1/jobs/{jid}/cancel", {}),
            ("POST", f"/v1/jobs/{jid}/labels", {"json": {"k": "positive"}}),
            ("POST", f"/v1/jobs/{jid}/retry", {}),
            ("GET", f"/v1/jobs/{jid}/metrics", {}),
            ("GET", f"/v1/jobs/{jid}/events", {}),
            ("GET", "/v1/classifiers/hostile", {}),
            ("GET", "/v1/classifiers/hostile/reliability", {}),
            ("GET", "/v1/classifiers/hostile/timeseries", {}),
            ("GET", "/v1/classifiers/hostile/confusion", {}),
            ("GET", "/v1/classifiers/hostile/label-distribution", {}),
            ("GET", "/v1/classifiers/hostile/selective", {}),
        ]:
            r = c.request(method, path, headers=b, **kwargs)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert c.get("/v1/jobs", headers=b).json()["data"] == []
        assert c.get("/v1/classifiers", headers=b).json() == []
        # B has its own namespace: the same classifier name is B's own version 1.
        created = c.post("/v1/classifiers", json=SPEC, headers=b).json()
        assert (created["version"], created["created"]) == (1, True)

        # Revoked keys are refused; admins list keys with their last use, never the key.
        a_id = next(
            k["id"] for k in c.get("/v1/keys", headers=auth(root)).json() if k["name"] == "a-writer"
        )
        listed = c.get("/v1/keys", headers=auth(root)).json()
        assert all("key" not in k for k in listed)
        assert any(k["last_used_at"] for k in listed if k["name"] == "a-writer")
        assert c.delete(f"/v1/keys/{a_id}", headers=auth(root)).status_code == 200
        assert c.get("/v1/jobs", headers=a).status_code == 401
