"""The worker process's model: loaded once, on first use, and kept for the process's life."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable

from labelq.backends.vllm_backend import VllmBackend
from labelq.scoring import Item, ScoredItem, Scorer
from labelq.settings import Settings
from labelq.spec import ClassifierSpec


class SerialScorer(Scorer):
    """A scorer whose engine serves one batch at a time. With a threads pool of two, one task
    scores while the other reads or writes the database: the engine never waits on SQL."""

    def __init__(self, backend: VllmBackend):
        super().__init__(backend)
        self._lock = threading.Lock()

    def score_batch(self, spec: ClassifierSpec, items: Iterable[Item]) -> list[ScoredItem]:  # type: ignore[override]
        with self._lock:
            return super().score_batch(spec, list(items))


# The one piece of process-wide state labelq has: the loaded engine of this worker process.
_scorers: dict[str, SerialScorer] = {}
_lock = threading.Lock()


def scorer_for(model: str, settings: Settings) -> Scorer:
    with _lock:
        if model not in _scorers:
            _scorers[model] = SerialScorer(VllmBackend(model, settings))
        return _scorers[model]


def close_all() -> None:
    """Stop every engine this process started (before exit: see vllm-on-cpu notes)."""
    with _lock:
        for scorer in _scorers.values():
            backend = scorer.backend
            if isinstance(backend, VllmBackend):
                backend.close()
        _scorers.clear()


atexit.register(close_all)
