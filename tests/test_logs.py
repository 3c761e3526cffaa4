"""Log lines: the date, time and zone in text; one JSON object a line with LABELQ_LOG_FORMAT=json,
labelq's lines and the engine's configuration alike."""

from __future__ import annotations

import json
import logging.config
import re
import subprocess
import sys
from datetime import datetime

from labelq import logs

SCRIPT = """
import logging, sys
from labelq import logs
logs.configure(json_lines=sys.argv[1] == "json")
logging.getLogger("labelq.test").info("hello")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("service.test").exception("it broke")
"""


def _run(kind: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_text_lines_carry_the_date_and_zone() -> None:
    first = _run("text")[0]
    match = re.match(r"^(\S+) INFO labelq\.test: hello$", first)
    assert match, first
    assert datetime.strptime(match.group(1), logs.DATE_FORMAT).tzinfo is not None


def test_json_lines_are_one_object_each() -> None:
    lines = _run("json")
    hello, broke = json.loads(lines[0]), json.loads(lines[1])
    assert (hello["level"], hello["logger"], hello["message"]) == ("INFO", "labelq.test", "hello")
    assert datetime.fromisoformat(hello["time"]).utcoffset() is not None
    assert broke["level"] == "ERROR" and "ZeroDivisionError" in broke["exception"]
    assert len(lines) == 2, "a traceback stays inside its line"


def test_the_engines_logging_config_uses_the_same_format() -> None:
    config = logs.vllm_config("WARNING", json_lines=True)
    logging.config.dictConfig(config)  # loads: the engine's processes do the same
    handler = logging.getLogger("vllm").handlers[0]
    assert isinstance(handler.formatter, logs.JsonFormatter)
    assert handler.filters and isinstance(handler.filters[0], logs.EngineNoise)
