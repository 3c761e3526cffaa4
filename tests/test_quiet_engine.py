"""A first run is quiet: at default verbosity the engine adds at most 5 lines to what labelq
itself says, in the checkpoint's own precision and in bfloat16 alike (each dtype has its own
load path and its own notices, e.g. one line per tensor when float32 weights load into
bfloat16). Counted on whatever CPU this runs on: AVX2-only machines emulate bfloat16, AVX512-BF16
ones compute it natively and log differently."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from labelq.logs import OWN_LOGGERS
from tests.conftest import TEST_MAX_MODEL_LEN, run_cli

pytestmark = pytest.mark.slow

OWN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S* \w+ (" + "|".join(OWN_LOGGERS) + r")[.:]")
SPEC = {
    "name": "quiet",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": " positive", "negative": " negative"},
}


@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_a_first_run_prints_at_most_five_engine_lines(
    dtype: str, tiny_model: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(SPEC))
    rows = tmp_path / "in.jsonl"
    rows.write_text("".join(json.dumps({"text": f"review {i}"}) + "\n" for i in range(20)))
    done = run_cli(
        "classify",
        "--spec", str(spec),
        "--input", str(rows),
        "--output", str(tmp_path / "out.jsonl"),
        "--model", str(tiny_model),
        "--quiet",
        env={
            "LABELQ_DTYPE": dtype,
            "LABELQ_MAX_MODEL_LEN": str(TEST_MAX_MODEL_LEN),
            "LABELQ_KV_CACHE_GIB": "1",
            "LABELQ_HOME": str(tmp_path / "home"),
        },
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 20
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    engine = [line for line in lines if not OWN.match(line)]
    assert len(engine) <= 5, "\n".join(engine)
    loaded = [line for line in lines if "loaded model" in line]
    assert len(loaded) == 1  # labelq's own line says the precision and the load time
    assert "warmed up in" in loaded[0]  # the first job runs at the steady rate
    if dtype == "auto":  # the default on a float32 checkpoint: a float32 forward pass's numbers
        from tests.reference import reference_logprob

        rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        for i, row in enumerate(rows[:5]):
            prompt = f"Review: review {i}\nSentiment:"
            for label, completion in (("positive", " positive"), ("negative", " negative")):
                want = reference_logprob(tiny_model, prompt, completion)
                assert abs(row["completion_logprobs"][label][completion] - want) < 1e-3
    assert ("bfloat16" in loaded[0]) == (dtype == "bfloat16"), loaded[0]
