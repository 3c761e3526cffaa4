"""Logging for every labelq command: one format, labelq's own messages at INFO, the engine's
(vLLM) at WARNING unless `-v`. vLLM's engine runs in processes of its own; it reads its logging
configuration from the file named by `VLLM_LOGGING_CONFIG_PATH`, which they inherit."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
OWN_LOGGERS = ("labelq", "service", "worker", "api", "db")


def vllm_config(level: str) -> dict[str, object]:
    """A `logging.config.dictConfig` for vLLM's loggers in labelq's format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"labelq": {"format": FORMAT, "datefmt": DATE_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "labelq",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["stderr"], "level": level, "propagate": False}},
    }


def configure(verbose: bool = False) -> None:
    engine_level = "INFO" if verbose else "WARNING"
    if not verbose:
        # Libraries' notices about their own future (torch, vLLM): not the user's to act on.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # ... and in the engine's own processes, which inherit the environment.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format=FORMAT, datefmt=DATE_FORMAT
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("vllm").setLevel(engine_level)
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:  # a user's own config wins
        path = Path(tempfile.gettempdir()) / f"labelq-vllm-logging-{engine_level.lower()}.json"
        path.write_text(json.dumps(vllm_config(engine_level)))
        os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(path)
