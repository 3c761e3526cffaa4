"""Scoring: from label completions' log-probabilities to label probabilities and confidences.

`Scorer` is the facade a caller meets: ``Scorer(backend).score(spec, items)``. The math below it
is plain numpy on arrays, testable without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import logsumexp, softmax

from labelq.backends.base import ScoreRequest, ScoringBackend
from labelq.errors import InputError, LabelqError
from labelq.prompts import EncodedPrompt, PromptBuilder
from labelq.spec import ClassifierSpec, Normalization

Array = NDArray[np.float64]
T = TypeVar("T")


# -- items and results ---------------------------------------------------------------------------
class Item(BaseModel):
    """One input: an optional `custom_id` and the fields the template reads (others kept)."""

    model_config = ConfigDict(frozen=True)
    custom_id: str | int | None = None
    fields: dict[str, Any] = Field(default_factory=dict)
    line: int | None = None

    @classmethod
    def from_record(cls, record: Any, line: int | None = None) -> Item:
        if not isinstance(record, dict):
            raise InputError(
                f"an item must be a JSON object, got {type(record).__name__}", line=line
            )
        fields = dict(record)
        custom_id = fields.pop("custom_id", None)
        if custom_id is not None and not isinstance(custom_id, str | int):
            raise InputError(
                "custom_id must be a string or an integer", field="custom_id", line=line
            )
        return cls(custom_id=custom_id, fields=fields, line=line)


class ItemResult(BaseModel):
    """What labelq returns for one scored item."""

    custom_id: str | int | None = None
    label: str
    confidence: float
    margin: float
    entropy: float
    energy: float
    logprobs: dict[str, float]
    probs: dict[str, float]
    completion_logprobs: dict[str, dict[str, float]]
    prompt_tokens: int
    truncated: bool
    warnings: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


class ItemError(BaseModel):
    """An item that could not be scored; the others go on. `kind`: `input` when the item
    itself is at fault (a missing field, too long: it fails again whenever it is sent), `engine`
    when the engine failed on it (it may score on another try)."""

    custom_id: str | int | None = None
    line: int | None = None
    error: str
    field: str | None = None
    kind: Literal["input", "engine"] = "input"


ScoredItem = ItemResult | ItemError


# -- the math ------------------------------------------------------------------------------------
def normalize_completions(
    sums: Array,
    token_counts: Array,
    char_counts: Array,
    normalization: Normalization,
    unconditional: Array | None = None,
) -> Array:
    """Per-completion scores (n, C) from raw log-prob sums under the spec's normalisation.

    `mean` divides by the completion's token count, `chars` by its character count (as
    lm-evaluation-harness's acc_norm), `unconditional` subtracts log P(completion | content-free
    prompt) (domain-conditional PMI).
    """
    if normalization == "sum":
        return sums
    if normalization == "mean":
        return sums / token_counts
    if normalization == "chars":
        return sums / char_counts[None, :]
    if unconditional is None:
        raise ValueError("unconditional normalisation needs the content-free log-probs")
    return sums - unconditional[None, :]


def label_scores(
    completion_scores: Array, completion_labels: Sequence[int], n_labels: int
) -> Array:
    """Label scores (n, K): the log-sum-exp over each label's completions."""
    groups = np.asarray(completion_labels)
    out = np.empty((completion_scores.shape[0], n_labels))
    for k in range(n_labels):
        out[:, k] = logsumexp(completion_scores[:, groups == k], axis=1)
    return out


def readings(probs: Array) -> dict[str, Array]:
    """Confidence readings of label probabilities (n, K): confidence = max prob, margin =
    top-1 minus top-2 prob, entropy in nats."""
    top2 = -np.sort(-probs, axis=1)[:, :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    return {
        "confidence": top2[:, 0],
        "margin": top2[:, 0] - top2[:, 1],
        "entropy": -plogp.sum(axis=1),
    }


def summarize(scores: Array, bias: Array | None = None) -> dict[str, Array]:
    """Probabilities and confidence readings from label scores (n, K).

    probs = softmax(scores + bias); confidence = max prob; margin = top-1 minus top-2 prob;
    entropy in nats; energy = log-sum-exp of the (unbiased) label scores, low for inputs unlike
    anything the labels describe.
    """
    logits = scores + (bias if bias is not None else 0.0)
    probs = softmax(logits, axis=1)
    return {
        "probs": probs,
        "label": np.argmax(logits, axis=1),
        **readings(probs),
        "energy": logsumexp(scores, axis=1),
    }


# -- the facade ----------------------------------------------------------------------------------
def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of up to `size` items (`itertools.batched` from Python 3.12 on)."""
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class Scorer:
    """Scores items for classifier specs with one backend (one model)."""

    def __init__(self, backend: ScoringBackend):
        self.backend = backend
        self._builders: dict[str, PromptBuilder] = {}
        self._unconditional: dict[str, Array] = {}

    @property
    def fingerprint(self) -> str | None:
        """The backend's engine identity (`labelq.backends.identity`), if it has one."""
        value = getattr(self.backend, "fingerprint", None)
        return str(value) if value is not None else None

    def builder(self, spec: ClassifierSpec) -> PromptBuilder:
        key = spec.model_dump_json()
        if key not in self._builders:
            self._builders[key] = PromptBuilder(
                spec, self.backend.tokenizer, self.backend.max_model_len
            )
        return self._builders[key]

    def score(
        self,
        spec: ClassifierSpec,
        items: Iterable[Item],
        *,
        batch_size: int = 64,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[ScoredItem]:
        """Score items in order; an item that cannot be scored becomes an `ItemError`."""
        out: list[ScoredItem] = []
        for batch in batches(items, batch_size):
            out.extend(self.score_batch(spec, batch))
            if on_progress:
                on_progress(len(batch))
        return out

    def score_batch(self, spec: ClassifierSpec, items: Sequence[Item]) -> list[ScoredItem]:
        """Score a batch with one backend call (two with `unconditional`)."""
        builder = self.builder(spec)
        results: list[ScoredItem | None] = [None] * len(items)
        prompts: list[str] = []
        positions: list[int] = []
        for i, item in enumerate(items):
            try:
                prompts.append(builder.render(item.fields))
                positions.append(i)
            except LabelqError as exc:
                results[i] = _error(item, exc)
        encoded: list[EncodedPrompt] = []
        if prompts:
            encoded_or_errors = self._encode_each(builder, prompts)
            kept = []
            for pos, enc in zip(positions, encoded_or_errors, strict=True):
                if isinstance(enc, LabelqError):
                    results[pos] = _error(items[pos], enc)
                else:
                    kept.append(pos)
                    encoded.append(enc)
            positions = kept
        if encoded:
            per_token = self.backend.token_logprobs(
                [ScoreRequest(e.prompt, e.completions) for e in encoded]
            )
            scored = self._results(spec, builder, [items[p] for p in positions], encoded, per_token)
            for pos, res in zip(positions, scored, strict=True):
                results[pos] = res
        return [r for r in results if r is not None]

    def _encode_each(
        self, builder: PromptBuilder, prompts: list[str]
    ) -> list[EncodedPrompt | LabelqError]:
        try:
            return list(builder.encode(prompts))
        except LabelqError:
            # One prompt is at fault; find which, keep the others.
            out: list[EncodedPrompt | LabelqError] = []
            for prompt in prompts:
                try:
                    out.append(builder.encode([prompt])[0])
                except LabelqError as exc:
                    out.append(exc)
            return out

    def unconditional_logprobs(self, spec: ClassifierSpec) -> Array:
        """log P(completion | content-free prompt) per completion, computed once per spec."""
        builder = self.builder(spec)
        key = spec.model_dump_json()
        if key not in self._unconditional:
            enc = builder.encode([builder.content_free_prompt()])[0]
            sums = self.backend.token_logprobs([ScoreRequest(enc.prompt, enc.completions)])[0]
            self._unconditional[key] = np.array([sum(t) for t in sums])
        return self._unconditional[key]

    def _results(
        self,
        spec: ClassifierSpec,
        builder: PromptBuilder,
        items: Sequence[Item],
        encoded: Sequence[EncodedPrompt],
        per_token: list[list[list[float]]],
    ) -> list[ScoredItem]:
        sums = np.array([[sum(toks) for toks in item] for item in per_token], dtype=np.float64)
        token_counts = np.array(
            [[len(c) for c in e.completions] for e in encoded], dtype=np.float64
        )
        char_counts = np.array([len(t) for t in builder.completion_texts], dtype=np.float64)
        unconditional = (
            self.unconditional_logprobs(spec) if spec.normalization == "unconditional" else None
        )
        comp_scores = normalize_completions(
            sums, token_counts, char_counts, spec.normalization, unconditional
        )
        labels = spec.label_names
        scores = label_scores(comp_scores, builder.completion_labels, len(labels))
        summary = summarize(scores, np.array(spec.bias_vector()))
        template_fields = builder.variables
        out: list[ScoredItem] = []
        for i, (item, enc) in enumerate(zip(items, encoded, strict=True)):
            completion_logprobs: dict[str, dict[str, float]] = {label: {} for label in labels}
            for j, text in enumerate(builder.completion_texts):
                completion_logprobs[labels[builder.completion_labels[j]]][text] = float(sums[i, j])
            warnings = [
                f"completion {text!r} merged with the prompt's last token; scored as tokenised "
                "on its own"
                for text in enc.boundary_fallbacks
            ]
            if enc.truncated:
                warnings.append(f"prompt truncated from the left to {len(enc.prompt)} tokens")
            out.append(
                ItemResult(
                    custom_id=item.custom_id,
                    label=labels[int(summary["label"][i])],
                    confidence=float(summary["confidence"][i]),
                    margin=float(summary["margin"][i]),
                    entropy=float(summary["entropy"][i]),
                    energy=float(summary["energy"][i]),
                    logprobs={lab: float(scores[i, k]) for k, lab in enumerate(labels)},
                    probs={lab: float(summary["probs"][i, k]) for k, lab in enumerate(labels)},
                    completion_logprobs=completion_logprobs,
                    prompt_tokens=len(enc.prompt),
                    truncated=enc.truncated,
                    warnings=warnings,
                    extra={k: v for k, v in item.fields.items() if k not in template_fields},
                )
            )
        return out


def _error(item: Item, exc: LabelqError) -> ItemError:
    return ItemError(
        custom_id=item.custom_id,
        line=exc.line if exc.line is not None else item.line,
        error=exc.message,
        field=exc.field,
    )
