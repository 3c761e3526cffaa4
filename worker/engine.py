"""The worker process's engines: loaded once per model, on first use, kept for the process's
life, stopped before it exits. One `Engines` object per worker process, owned by its runtime."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from labelq.backends.vllm_backend import VllmBackend
from labelq.scoring import Item, ScoredItem, Scorer
from labelq.settings import Settings
from labelq.spec import ClassifierSpec

log = logging.getLogger(__name__)


class SerialScorer(Scorer):
    """A scorer whose engine serves one batch at a time. With a threads pool of two, one task
    scores while the other reads or writes the database: the engine never waits on SQL."""

    def __init__(self, backend: VllmBackend):
        super().__init__(backend)
        self.vllm = backend
        self._lock = threading.Lock()

    def score_batch(self, spec: ClassifierSpec, items: Sequence[Item]) -> list[ScoredItem]:
        with self._lock:
            return super().score_batch(spec, items)


class Engines:
    """Scorers by model for this process (usually one model)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._scorers: dict[str, SerialScorer] = {}
        self._lock = threading.Lock()

    def scorer_for(self, model: str) -> Scorer:
        with self._lock:
            if model not in self._scorers:
                backend = VllmBackend(model, self.settings)
                backend.load()  # now, under the lock: one load per model per process
                self._scorers[model] = SerialScorer(backend)
            return self._scorers[model]

    def discard(self, model: str) -> None:
        """Stop and forget a model's engine (it failed); the next use loads it again."""
        with self._lock:
            scorer = self._scorers.pop(model, None)
        if scorer is not None:
            try:
                scorer.vllm.close()
            except Exception as exc:
                log.warning("stopping the failed engine of %s: %s", model, exc)

    def kill(self, model: str, scorer: Scorer) -> None:
        """Kill an engine of `model` that stopped answering (no shutdown: it would not answer
        that either), and forget it if it is still the model's: the next use loads a new one.
        Only that engine: a call that timed out waiting behind a hung one must not kill the
        new engine loaded since."""
        with self._lock:
            if self._scorers.get(model) is scorer:
                del self._scorers[model]
        if isinstance(scorer, SerialScorer):
            log.error("killing an engine of %s: it stopped answering", model)
            scorer.vllm.kill()

    def close(self) -> None:
        """Stop every engine (before the process exits: see vllm-on-cpu notes)."""
        with self._lock:
            scorers, self._scorers = list(self._scorers.values()), {}
        for scorer in scorers:
            scorer.vllm.close()
