"""The demo models: the random one is the same whatever the process imported before building
it; the trained one really classifies (the README's first command, end to end)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CODE = """
import hashlib, sys
if sys.argv[1] == "after-service-imports":
    import api.app, email.message, email.utils, http.client, logging.handlers  # noqa: F401
from labelq.demo_model import _corpus
print(hashlib.sha1("\\0".join(_corpus()).encode()).hexdigest())
"""


def test_tokenizer_corpus_does_not_depend_on_imports() -> None:
    digests = {
        subprocess.run(
            [sys.executable, "-c", CODE, state],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout.strip()
        for state in ("bare", "after-service-imports")
    }
    assert len(digests) == 1, digests


@pytest.mark.slow
def test_demo_trains_a_real_classifier_and_reports(tmp_path: Path) -> None:
    """The README's first command, from nothing: it trains the demo model on SST-2's training
    split, classifies the samples and reports accuracy and ECE on the test split through jobs."""
    import re

    from tests.conftest import run_cli

    env = {"LABELQ_HOME": str(tmp_path / "home")}
    proc = run_cli("demo", env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[5/5]" in out and "failed (line 5): missing field 'text'" in out
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    ece = re.search(r"ECE\s+([0-9.]+) uncalibrated -> ([0-9.]+) calibrated", out)
    assert ece is not None, out
    assert accuracy >= 0.70, out
    assert float(ece.group(2)) < float(ece.group(1)), out
    assert (tmp_path / "home" / "demo-model-sst2" / "labelq-demo.json").exists()
