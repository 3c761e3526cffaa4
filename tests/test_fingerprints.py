"""Engine identity: every chunk records the fingerprint of the engine that scored it, a job
reports its engines and warns when they differ, a calibration records the engines it was
fitted on and one applied to another engine's scores is flagged (or, by a setting, not
applied)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.models import JobItem
from labelq.backends.fake import FakeBackend
from labelq.backends.identity import describe, fingerprint
from labelq.scoring import Scorer
from tests.conftest import make_client

SPEC = {
    "name": "fp",
    "template": "{{ text }}",
    "labels": {"positive": " positive", "negative": " negative"},
}
ITEMS = [
    {"custom_id": f"i{i}", "text": f"a {('positive', 'negative')[i % 2]} day"} for i in range(40)
]
GOLD = {f"i{i}": ("positive", "negative")[i % 2] for i in range(40)}


def test_the_fingerprint_moves_with_what_changes_scores(tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    base = describe(str(copy), dtype="float32", engine="vllm x", labelq="1", strategy="shared")
    assert {"config.json", "tokenizer.json"} <= set(base["files"])
    assert any(name.endswith(".safetensors") for name in base["files"])
    first = fingerprint(base)
    assert first == fingerprint(describe(str(copy) + "/", **{k: base[k] for k in (
        "dtype", "engine", "labelq", "strategy")}))  # fmt: skip
    for change in ({"dtype": "bfloat16"}, {"engine": "vllm y"}, {"strategy": "per_candidate"}):
        assert fingerprint({**base, **change}) != first, change
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))
    rest = {k: base[k] for k in ("dtype", "engine", "labelq", "strategy")}
    assert fingerprint(describe(str(copy), **rest)) != first, "another config"


@pytest.mark.parametrize("policy", ["warn", "refuse"])
def test_two_engines_and_a_calibration_from_the_other_are_reported(
    factory: Any, policy: str
) -> None:
    one = Scorer(FakeBackend())
    other = Scorer(FakeBackend(max_model_len=2048))  # another engine: another fingerprint
    assert one.fingerprint and other.fingerprint and one.fingerprint != other.fingerprint
    c, _ = make_client(factory, one, calibration_engine_mismatch=policy)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        job = c.post("/v1/jobs", json={"classifier": "fp", "items": ITEMS}).json()
        status = c.get(f"/v1/jobs/{job['id']}").json()
        assert status["fingerprints"] == [one.fingerprint] and status["warnings"] == []
        c.post(f"/v1/jobs/{job['id']}/labels", json=GOLD)
        fit = c.post(
            "/v1/classifiers/fp/calibrations",
            json={"method": "temperature", "job_id": job["id"], "activate": True},
        ).json()
        fitted = c.get(f"/v1/classifiers/fp/calibrations/{fit['id']}").json()
        assert fitted["status"] == "ready" and fitted["fitted_on"]["fingerprints"] == [
            one.fingerprint
        ]
        same = c.post("/v1/jobs", json={"classifier": "fp", "items": ITEMS[:8]}).json()
        assert c.get(f"/v1/jobs/{same['id']}").json()["warnings"] == [], "its own engine"
    d, _ = make_client(factory, other, calibration_engine_mismatch=policy)
    with d:
        moved = d.post("/v1/jobs", json={"classifier": "fp", "items": ITEMS[:8]}).json()
        status = d.get(f"/v1/jobs/{moved['id']}").json()
    assert status["fingerprints"] == [other.fingerprint]
    (warning,) = status["warnings"]
    assert "calibration fitted on another engine's scores" in warning
    assert ("stored uncalibrated" in warning) == (policy == "refuse")
    with factory() as s:
        used = set(s.scalars(select(JobItem.calibration_id).where(JobItem.job_id == moved["id"])))
    assert used == ({None} if policy == "refuse" else {fit["id"]})


def test_a_job_scored_by_two_engines_says_so(factory: Any) -> None:
    from db import chunks
    from db.chunks import ItemOutcome

    c, _ = make_client(factory, None)  # chunks stay queued: completed by hand below
    with c:
        c.post("/v1/classifiers", json=SPEC)
        job = c.post("/v1/jobs", json={"classifier": "fp", "items": ITEMS[:8]}).json()
        for seq, engine in ((0, "aaaa"), (1, "bbbb")):
            with factory.begin() as s:
                work = chunks.claim_chunk(s, job["id"], seq, "w", lease_seconds=60, max_attempts=3)
                assert work is not None
                results = {i: ItemOutcome({"label": "positive"}) for i, _ in work.items}
                assert chunks.complete_chunk(s, work, results, None, engine)
        status = c.get(f"/v1/jobs/{job['id']}").json()
    assert status["fingerprints"] == ["aaaa", "bbbb"]
    assert any("scored by 2 engines (aaaa, bbbb)" in w for w in status["warnings"])


@pytest.mark.slow
def test_a_real_engine_knows_its_fingerprint(vllm_backend: Any, per_candidate_backend: Any) -> None:
    """vLLM on the tiny model: the fingerprint is there once the engine runs, stable, and the
    other scoring strategy on the same engine is another engine."""
    vllm_backend.load()
    fp = vllm_backend.fingerprint
    assert fp is not None and len(fp) == 16 and vllm_backend.fingerprint == fp
    assert per_candidate_backend.fingerprint not in (None, fp)
    assert Scorer(vllm_backend).fingerprint == fp


def test_one_model_spelled_two_ways_is_one_queue() -> None:
    """`/models/m/` and `/models//m` were queues of their own, which no worker of `/models/m`
    served; a canonical spelling keeps the name it had, so workers of the previous release
    still share its queue."""
    from labelq.settings import Settings
    from service.dispatch import queue_for

    assert queue_for("/models/m/") == queue_for("/models//m") == queue_for("/models/./m")
    assert queue_for("/models/m") == "labelq.m.e50e27cdaf"  # as the previous release named it
    assert queue_for("org/name") == "labelq.name.62523cc68e"
    assert queue_for("/models/a") != queue_for("/models/b")
    settings = Settings(models=["/models/m", "big=/models/big"])
    assert settings.resolve_model("/models/m/") == "/models/m"
    assert settings.resolve_model("/models/big/") == "/models/big"
