"""The worker process's model: loaded once, on first use, and kept for the process's life."""

from __future__ import annotations

import atexit
import threading

from labelq.backends.vllm_backend import VllmBackend
from labelq.scoring import Scorer
from labelq.settings import Settings

# The one piece of process-wide state labelq has: the loaded engine of this worker process.
_scorers: dict[str, Scorer] = {}
_lock = threading.Lock()


def scorer_for(model: str, settings: Settings) -> Scorer:
    with _lock:
        if model not in _scorers:
            backend = VllmBackend(model, settings)
            atexit.register(backend.close)
            _scorers[model] = Scorer(backend)
        return _scorers[model]


def close_all() -> None:
    """Stop every engine this process started (before exit: see vllm-on-cpu notes)."""
    with _lock:
        for scorer in _scorers.values():
            close = getattr(scorer.backend, "close", None)
            if close:
                close()
        _scorers.clear()
