"""The demo model is the same whatever the process imported before building it."""

from __future__ import annotations

import subprocess
import sys

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
