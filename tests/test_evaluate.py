"""`labelq calibrate eval` on files: the JSON keys and values, and errors naming the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from labelq import metrics
from tests.conftest import run_cli


def _files(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(300, 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=p) for p in probs])
    labels = ["a", "b", "c"]
    scored, gold = tmp_path / "scored.jsonl", tmp_path / "gold.jsonl"
    with open(scored, "w") as f:
        for i, p in enumerate(probs):
            f.write(
                json.dumps({"custom_id": i, "probs": dict(zip(labels, p.tolist(), strict=True))})
                + "\n"
            )
        f.write(json.dumps({"custom_id": 999, "line": 7, "error": "missing field"}) + "\n")
    with open(gold, "w") as f:
        for i, label in enumerate(y):
            f.write(json.dumps({"custom_id": i, "label": labels[label]}) + "\n")
        f.write(json.dumps({"custom_id": "unmatched", "label": "a"}) + "\n")
    return scored, gold, probs, y


def test_eval_json_matches_the_metrics_module(tmp_path: Path) -> None:
    scored, gold, probs, y = _files(tmp_path)
    proc = run_cli(
        "calibrate", "eval", "--input", str(scored), "--labels", str(gold), "--bins", "10", "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert list(out) == [
        "n",
        "accuracy",
        "ece",
        "ece_equal_mass",
        "mce",
        "brier",
        "nll",
        "auroc",
        "aurc",
    ]
    assert out["n"] == 300
    assert out["ece"] == pytest.approx(metrics.ece(probs, y, 10))
    assert out["ece_equal_mass"] == pytest.approx(metrics.ece(probs, y, 10, "mass"))
    assert out["nll"] == pytest.approx(metrics.nll(probs, y))
    assert "1 result lines have no probabilities" in proc.stderr
    assert "1 gold labels match no scored result" in proc.stderr
    table = run_cli("calibrate", "eval", "--input", str(scored), "--labels", str(gold))
    assert table.returncode == 0 and "ece_equal_mass" in table.stdout


def test_eval_errors_name_the_line(tmp_path: Path) -> None:
    scored, gold, _, _ = _files(tmp_path)
    gold.write_text('{"custom_id": 0, "label": "a"}\n{"custom_id": 1}\n')
    proc = run_cli("calibrate", "eval", "--input", str(scored), "--labels", str(gold))
    assert proc.returncode == 2 and "line 2" in proc.stderr and "field 'label'" in proc.stderr
    gold.write_text('{"custom_id": 0, "label": "zzz"}\n')
    proc = run_cli("calibrate", "eval", "--input", str(scored), "--labels", str(gold))
    assert proc.returncode == 2 and "unknown label 'zzz'" in proc.stderr
