"""`labelq classify`: JSONL in, JSONL out in input order; bad lines reported, the rest go on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelq.classify import classify_file
from labelq.jsonl import read_items
from labelq.scoring import Item, Scorer
from labelq.spec import parse_spec
from tests.conftest import run_cli

SPEC = {
    "name": "cli-test",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good"], "negative": " negative"},
}

LINES = [
    '{"custom_id": "a", "text": "warm and funny", "source": "x"}',
    "{not json",
    "",
    '["a", "list"]',
    '{"custom_id": "d", "txt": "wrong field"}',
    '{"text": "no id at all"}',
    '{"custom_id": {"bad": 1}, "text": "x"}',
    '{"custom_id": 7, "text": "naïve café 😀"}',
]


def test_read_items_names_each_bad_line() -> None:
    out = list(read_items(LINES))
    kinds = [(type(x).__name__, getattr(x, "line", None)) for x in out]
    assert kinds == [
        ("Item", 1),
        ("InputError", 2),
        ("InputError", 4),
        ("Item", 5),
        ("Item", 6),
        ("InputError", 7),
        ("Item", 8),
    ]
    assert "invalid JSON" in str(out[1]) and "JSON object" in str(out[2])
    assert out[5].field == "custom_id"  # type: ignore[union-attr]


def _check_output(rows: list[dict[str, Any]]) -> None:
    assert [r.get("custom_id") for r in rows] == ["a", None, None, "d", None, None, 7]
    assert [r.get("line") for r in rows if "error" in r] == [2, 4, 5, 7]
    assert rows[0]["extra"] == {"source": "x"} and rows[0]["label"] in {"positive", "negative"}
    assert rows[3]["field"] == "text" and "missing field 'text'" in rows[3]["error"]
    for row in (rows[0], rows[4], rows[6]):
        assert set(row["probs"]) == {"positive", "negative"}
        assert row["completion_logprobs"]["positive"].keys() == {" positive", " good"}


def test_classify_file_in_process(tmp_path: Path, scorer: Scorer) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    report = classify_file(scorer, parse_spec(SPEC), src, dst, batch_size=2, progress=False)
    rows = [json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()]
    assert report.written == 7 and report.failed == 4
    _check_output(rows)
    # The same items scored directly give the same numbers.
    direct = scorer.score(parse_spec(SPEC), [Item(fields={"text": "warm and funny"})])
    assert rows[0]["probs"] == pytest.approx(direct[0].model_dump()["probs"], abs=1e-6)


@pytest.mark.slow
def test_cli_end_to_end(tmp_path: Path, tiny_model: Path) -> None:
    spec, src, dst = tmp_path / "spec.yaml", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    spec.write_text(json.dumps(SPEC))
    src.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    cmd = [
        "classify",
        "--spec",
        str(spec),
        "--input",
        str(src),
        "--output",
        str(dst),
        "--model",
        str(tiny_model),
        "--batch-size",
        "3",
    ]
    env = {"LABELQ_DTYPE": "float32", "LABELQ_MAX_MODEL_LEN": "512", "LABELQ_KV_CACHE_GIB": "1"}
    proc = run_cli(*cmd, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote 7 results" in proc.stderr and "(4 failed)" in proc.stderr
    _check_output([json.loads(line) for line in dst.read_text(encoding="utf-8").splitlines()])


def test_cli_reports_a_bad_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text('name: x\ntemplate: "{{ text }}"\nlabels: {only: " one"}\n')
    proc = run_cli(
        "classify",
        "--spec",
        str(spec),
        "--input",
        "x",
        "--output",
        str(tmp_path / "o"),
        "--model",
        "m",
    )
    assert proc.returncode == 2
    assert "field 'labels'" in proc.stderr and "at least two labels" in proc.stderr
