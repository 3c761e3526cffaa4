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
    """Scorers by model for this process (usually one model). A load holds `_loading` (one
    load at a time, so one per model); the table's lock is held only to read or change it, so
    killing a hung engine never waits behind a load."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._scorers: dict[str, SerialScorer] = {}
        self._lock = threading.Lock()
        self._loading = threading.Lock()

    def scorer_for(self, model: str) -> Scorer:
        with self._lock:
            if model in self._scorers:
                return self._scorers[model]
        with self._loading:
            with self._lock:
                if model in self._scorers:
                    return self._scorers[model]
            backend = VllmBackend(model, self.settings)
            backend.load()  # now: one load per model per process
            scorer = SerialScorer(backend)
            with self._lock:
                self._scorers[model] = scorer
            return scorer

    def _forget(self, model: str, scorer: Scorer | None) -> SerialScorer | None:
        """Drop `model`'s engine, only if it is still `scorer` (when given); the one dropped."""
        with self._lock:
            current = self._scorers.get(model)
            if current is None or (scorer is not None and current is not scorer):
                return None
            return self._scorers.pop(model)

    def discard(self, model: str, scorer: Scorer | None = None) -> None:
        """Stop and forget a model's engine (it failed; when `scorer` is given, only if it is
        still that one: a failure on an engine replaced since must not stop the new one); the
        next use loads a new one. A call still running on the old one cannot restart it."""
        dropped = self._forget(model, scorer)
        if dropped is None and isinstance(scorer, SerialScorer):
            dropped = scorer  # replaced already: make sure it stays stopped
        if dropped is not None:
            try:
                dropped.vllm.close(final=True)
            except Exception as exc:
                log.warning("stopping the failed engine of %s: %s", model, exc)

    def kill(self, model: str, scorer: Scorer) -> None:
        """Kill an engine of `model` that stopped answering (no shutdown: it would not answer
        that either), and forget it if it is still the model's: the next use loads a new one.
        Only that engine: a call that timed out waiting behind a hung one must not kill the
        new engine loaded since."""
        self._forget(model, scorer)
        if isinstance(scorer, SerialScorer) and not scorer.vllm.stopped:
            log.error("killing an engine of %s: it stopped answering", model)
            scorer.vllm.kill()

    def close(self) -> None:
        """Stop every engine (before the process exits: see vllm-on-cpu notes)."""
        with self._lock:
            scorers, self._scorers = list(self._scorers.values()), {}
        for scorer in scorers:
            scorer.vllm.close(final=True)
