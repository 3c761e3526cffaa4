"""The files people have: JSONL, CSV and Parquet in and out, column mapping, bad records named
by line, offline calibration, and the Python API for notebooks (on the fake backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.special import softmax

from labelq import formats
from labelq.classify import classify_file
from labelq.errors import InputError
from labelq.notebook import Classifier
from labelq.scoring import Scorer
from labelq.spec import parse_spec

SPEC = {
    "name": "formats",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}


def _records(path: Path, fmt: formats.Format, **mapping: str) -> list[Any]:
    return list(formats.read(path, fmt, mapping))


def test_csv_with_a_short_row_and_a_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(
        b"id,review,stars\n"
        b"a,a positive film,5\n"
        b"b,short row\n"
        b"c,caf\xe9 au lait,3\n"
        b'd,"quoted, with comma",4\n'
    )
    out = _records(path, "csv", text="review")
    assert out[0] == (2, {"id": "a", "text": "a positive film", "stars": "5"})
    assert isinstance(out[1], InputError) and out[1].line == 3 and "3 columns" in out[1].message
    assert isinstance(out[2], InputError) and out[2].line == 4 and "UTF-8" in out[2].message
    assert out[3] == (5, {"id": "d", "text": "quoted, with comma", "stars": "4"})


def test_jsonl_non_utf8_line_fails_alone(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe"}\n{"text": "fine"}\n')
    out = _records(path, "jsonl")
    assert out[0] == (1, {"text": "ok"}) and out[2] == (3, {"text": "fine"})
    assert isinstance(out[1], InputError) and out[1].line == 2


def test_parquet_rows_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"review": ["x", "y"], "n": [1, 2]}), path)
    assert _records(path, "parquet", text="review") == [
        (1, {"n": 1, "text": "x"}),
        (2, {"n": 2, "text": "y"}),
    ]
    assert formats.count(path, "parquet") == 2


def test_format_detection_and_mapping_errors() -> None:
    assert formats.detect("a.CSV") == "csv" and formats.detect("-") == "jsonl"
    assert formats.detect("x.txt", "parquet") == "parquet"
    with pytest.raises(InputError, match="--format"):
        formats.detect("x.txt")
    with pytest.raises(InputError, match="FIELD=COLUMN"):
        formats.parse_mapping(["text"])
    assert formats.parse_mapping(["text=review"]) == {"text": "review"}


@pytest.mark.parametrize("out_fmt", ["jsonl", "csv", "parquet"])
def test_classify_file_any_format_in_order(
    tmp_path: Path, fake_scorer: Scorer, out_fmt: str
) -> None:
    src = tmp_path / "in.csv"
    src.write_text("id,review\nr1,a positive film\nr2\nr3,negative and dull\n", encoding="utf-8")
    dst = tmp_path / f"out.{out_fmt}"
    report = classify_file(
        fake_scorer,
        parse_spec(SPEC),
        src,
        dst,
        fields={"text": "review", "custom_id": "id"},
        progress=False,
    )
    assert (report.written, report.failed) == (3, 1)
    if out_fmt == "jsonl":
        rows = [json.loads(x) for x in dst.read_text(encoding="utf-8").splitlines()]
        labels = [r.get("label") for r in rows]
        assert rows[1]["line"] == 3 and "columns" in rows[1]["error"]
    elif out_fmt == "csv":
        import csv

        rows = list(csv.DictReader(dst.open(encoding="utf-8")))
        labels = [r["label"] or None for r in rows]
        assert rows[1]["line"] == "3" and float(rows[0]["p_positive"]) > 0.5
    else:
        table = pq.read_table(dst).to_pylist()
        labels = [r["label"] for r in table]
        assert table[1]["line"] == 3 and table[0]["custom_id"] == "r1"
        assert json.loads(table[2]["result"])["label"] == "negative"
    assert labels == ["positive", None, "negative"]


def test_offline_calibration_matches_the_formula(tmp_path: Path, fake_scorer: Scorer) -> None:
    src, raw, cal = tmp_path / "in.jsonl", tmp_path / "raw.jsonl", tmp_path / "cal.jsonl"
    src.write_text(
        "\n".join(json.dumps({"text": t}) for t in ["positive", "negative", "meh"]) + "\n"
    )
    exported = tmp_path / "calibration.json"
    exported.write_text(
        json.dumps(
            {
                "id": 7,
                "classifier": "formats",
                "version": 1,
                "method": "temperature",
                "params": {"temperature": 2.5},
                "labels": ["positive", "negative"],
            }
        )
    )
    spec = parse_spec(SPEC)
    classify_file(fake_scorer, spec, src, raw, progress=False)
    classify_file(fake_scorer, spec, src, cal, calibration_file=exported, progress=False)
    for a, b in zip(raw.read_text().splitlines(), cal.read_text().splitlines(), strict=True):
        before, after = json.loads(a), json.loads(b)
        z = np.log([before["probs"]["positive"], before["probs"]["negative"]])
        assert after["probs"]["positive"] == pytest.approx(softmax(z / 2.5)[0], abs=1e-9)
        assert after["calibration"] == {"id": 7, "method": "temperature"}
    wrong = tmp_path / "wrong.json"
    wrong.write_text(exported.read_text().replace('"negative"]', '"neutral"]'))
    with pytest.raises(InputError, match="calibrates labels"):
        classify_file(fake_scorer, spec, src, raw, calibration_file=wrong, progress=False)


def test_notebook_api_returns_a_dataframe(fake_scorer: Scorer) -> None:
    import pandas as pd

    clf = Classifier(parse_spec(SPEC), fake_scorer.backend)
    frame = pd.DataFrame({"review": ["a positive film", "negative", None]}, index=["x", "y", "z"])
    out = clf.classify(frame, fields={"text": "review"})
    assert list(out.index) == ["x", "y", "z"]
    assert list(out["label"][:2]) == ["positive", "negative"]
    assert set(out.columns) >= {"label", "confidence", "probs", "completion_logprobs"}
    from_list = clf.classify([{"text": "positive"}, {"body": "no text"}])
    assert from_list["field"][1] == "text" and "missing field" in from_list["error"][1]


def test_notebook_and_classify_agree_under_a_batch_calibration(
    tmp_path: Path, fake_scorer: Scorer
) -> None:
    """A batch calibration removes the batch's own mean log-probability: the notebook API and
    `labelq classify` must calibrate the same batches, so the same rows come out of both (the
    notebook used to calibrate row by row, each row a batch of one: a different prior)."""
    texts = [f"review {i} " + ("positive" if i % 3 else "negative") for i in range(25)]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("\n".join(json.dumps({"custom_id": i, "text": t}) for i, t in enumerate(texts)))
    exported = tmp_path / "batch.json"
    exported.write_text(
        json.dumps(
            {
                "id": 3,
                "classifier": "formats",
                "version": 1,
                "method": "batch",
                "params": {"mean": [-0.1, -3.0], "min_batch": 10},
                "labels": ["positive", "negative"],
            }
        )
    )
    spec = parse_spec(SPEC)
    classify_file(fake_scorer, spec, src, out, calibration_file=exported, batch_size=10)
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    clf = Classifier(spec, fake_scorer.backend, calibration_file=exported)
    notebook = clf.classify_records(
        [{"custom_id": i, "text": t} for i, t in enumerate(texts)], batch_size=10
    )
    assert len(notebook) == len(offline) == 25
    for a, b in zip(notebook, offline, strict=True):
        assert a["custom_id"] == b["custom_id"]
        assert a["probs"] == pytest.approx(b["probs"], abs=1e-12)
        assert a["label"] == b["label"] and a["calibration"] == {"id": 3, "method": "batch"}
    # The batch's own prior moved the probabilities away from the uncalibrated ones.
    raw = Classifier(spec, fake_scorer.backend).classify_records([{"text": texts[0]}])[0]
    assert notebook[0]["probs"]["positive"] != pytest.approx(raw["probs"]["positive"], abs=1e-3)
