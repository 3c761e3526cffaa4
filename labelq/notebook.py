"""labelq from Python (a notebook, a script): load a spec, score a list of dicts or a pandas
DataFrame, get a DataFrame back with the same fields as `ItemResult`.

    from labelq.notebook import Classifier

    with Classifier.load("spec.yaml", model="/models/qwen2.5-1.5b") as clf:
        out = clf.classify(df, fields={"text": "review"})   # a DataFrame, one row per input
        out[["custom_id", "label", "confidence"]]

The engine starts on the first call and stops with `close()` (or the `with` block).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from labelq.backends.base import ScoringBackend
from labelq.classify import ExportedCalibration, classified
from labelq.errors import LabelqError
from labelq.jsonl import items_of
from labelq.scoring import Scorer
from labelq.settings import Settings
from labelq.spec import ClassifierSpec, load_spec, parse_spec

COLUMNS = [
    "custom_id",
    "label",
    "confidence",
    "margin",
    "entropy",
    "energy",
    "probs",
    "logprobs",
    "completion_logprobs",
    "prompt_tokens",
    "truncated",
    "warnings",
    "extra",
    "error",
    "field",
]


class Classifier:
    """A spec and a scoring backend (vLLM by default) in one object."""

    def __init__(
        self,
        spec: ClassifierSpec,
        backend: ScoringBackend,
        calibration_file: Path | None = None,
    ):
        self.spec = spec
        self.backend = backend
        self.scorer = Scorer(backend)
        self.calibrated = (
            ExportedCalibration.load(calibration_file, spec) if calibration_file else None
        )

    @classmethod
    def load(
        cls,
        spec: str | Path | Mapping[str, Any],
        model: str | None = None,
        settings: Settings | None = None,
        calibration_file: str | Path | None = None,
    ) -> Classifier:
        """A spec file (or a dict) on `model` (default: the spec's, then LABELQ_MODEL)."""
        from labelq.backends.vllm_backend import VllmBackend

        parsed = parse_spec(dict(spec)) if isinstance(spec, Mapping) else load_spec(spec)
        settings = settings or Settings()
        chosen = model or parsed.model or settings.model
        if not chosen:
            raise LabelqError("no model: pass model=, set `model` in the spec or LABELQ_MODEL")
        return cls(
            parsed,
            VllmBackend(chosen, settings),
            Path(calibration_file) if calibration_file else None,
        )

    def classify_records(
        self,
        records: Iterable[Mapping[str, Any]],
        fields: Mapping[str, str] | None = None,
        batch_size: int = 64,
    ) -> list[dict[str, Any]]:
        """One result dict per record, in order; a record that cannot be scored gets `error`
        (and `field`) instead of a label. `fields` maps template fields to record keys. The
        same rows as `labelq classify` with the same batch size (a calibration is applied a
        batch at a time there and here)."""
        numbered = ((n, _renamed(dict(r), fields or {})) for n, r in enumerate(records, start=1))
        out: list[dict[str, Any]] = []
        for batch in classified(
            self.scorer,
            self.spec,
            items_of(numbered),
            batch_size=batch_size,
            calibrated=self.calibrated,
        ):
            out.extend(line for _, line in batch)
        return out

    def classify(
        self,
        data: Any,
        fields: Mapping[str, str] | None = None,
        batch_size: int = 64,
    ) -> Any:
        """A pandas DataFrame of results for a DataFrame or a list of dicts, one row per input
        in order (the input's index is kept for a DataFrame)."""
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            records = data.to_dict(orient="records")
            index = data.index
        else:
            records, index = list(data), None
        rows = self.classify_records(records, fields, batch_size)
        frame = pd.DataFrame(rows, columns=[c for c in COLUMNS if any(c in r for r in rows)])
        if index is not None:
            frame.index = index
        return frame

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Classifier:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _renamed(data: dict[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """A record with template field names for the keys `fields` maps them from."""
    for field, key in fields.items():
        if key in data:
            data[field] = data.pop(key)
    return data
