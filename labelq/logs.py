"""Logging for every labelq command: one format, labelq's own messages at INFO, the engine's
(vLLM) at WARNING unless `-v`. vLLM's engine runs in processes of its own; it reads its logging
configuration from the file named by `VLLM_LOGGING_CONFIG_PATH`, which they inherit.

At default verbosity the engine's notices about its own build and platform are dropped too
(`EngineNoise`): on a CPU they are a dozen warnings that are not the user's to act on (no
Triton, eager mode, no tcmalloc in LD_PRELOAD, one line per tensor when a float32 checkpoint
is loaded in bfloat16, a force-kill of an engine process labelq is stopping), and labelq says
in one line of its own what matters of them (the precision, the load time)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # the date and the zone too: logs outlive the day


class JsonFormatter(logging.Formatter):
    """One JSON object a line (LABELQ_LOG_FORMAT=json): `time` (ISO 8601, milliseconds, UTC),
    `level`, `logger`, `message`, and `exception` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _formatter(json_lines: bool) -> logging.Formatter:
    return JsonFormatter() if json_lines else logging.Formatter(FORMAT, DATE_FORMAT)


OWN_LOGGERS = ("labelq", "service", "worker", "api", "db")


# Prefixes of the engine's notices dropped at default verbosity (`-v` shows them).
ENGINE_NOISE = (
    "Enforce eager set",
    "Inductor compilation was disabled",
    "Triton is not installed",
    "Triton is installed, but doesn't include CPU backend",
    "Reset SSM cache type",
    "Model Runner V2 requires Triton",
    "libtcmalloc is not found",
    "libiomp is not found",
    "Attempted to load weight",
    "[shutdown] Process manager: force killing",
)


class EngineNoise(logging.Filter):
    """Drops the engine's platform notices (`ENGINE_NOISE`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(ENGINE_NOISE)


def vllm_config(level: str, quiet: bool = True, json_lines: bool = False) -> dict[str, object]:
    """A `logging.config.dictConfig` for vLLM's loggers in labelq's format."""
    handler: dict[str, object] = {
        "class": "logging.StreamHandler",
        "formatter": "labelq",
        "stream": "ext://sys.stderr",
    }
    if quiet:
        handler["filters"] = ["noise"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "labelq": {"()": "labelq.logs.JsonFormatter"}
            if json_lines
            else {"format": FORMAT, "datefmt": DATE_FORMAT}
        },
        "filters": {"noise": {"()": "labelq.logs.EngineNoise"}},
        "handlers": {"stderr": handler},
        "loggers": {"vllm": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }


def configure(verbose: bool = False, json_lines: bool = False) -> None:
    engine_level = "INFO" if verbose else "WARNING"
    if not verbose:
        # Libraries' notices about their own future (torch, vLLM): not the user's to act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # ... and in the engine's own processes, which inherit the environment.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
        # torch's C++ warnings there (a NUMA binding notice on every CPU engine start)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    handler = logging.StreamHandler()
    handler.setFormatter(_formatter(json_lines))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    engine = logging.getLogger("vllm")
    engine.setLevel(engine_level)
    if not verbose and not any(isinstance(f, EngineNoise) for f in engine.filters):
        engine.addFilter(EngineNoise())
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:  # a user's own config wins
        # Named by its content: another release's labelq on this host (whose config names
        # other classes) never overwrites this one, nor this one that.
        text = json.dumps(vllm_config(engine_level, not verbose, json_lines), sort_keys=True)
        digest = hashlib.sha1(text.encode()).hexdigest()[:12]
        path = Path(tempfile.gettempdir()) / f"labelq-vllm-logging-{digest}.json"
        path.write_text(text)
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)
