"""The one interface every scoring backend implements (cf. lm-evaluation-harness's `LM`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ScoreRequest:
    """Score every completion after one prompt; all are token ids."""

    prompt: list[int]
    completions: list[list[int]]


class ScoringBackend(Protocol):
    """Computes log P(completion token | prompt, earlier completion tokens) for each token."""

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer."""

    @property
    def max_model_len(self) -> int | None:
        """Longest prompt plus completion the model takes, if known."""

    def token_logprobs(self, requests: Sequence[ScoreRequest]) -> list[list[list[float]]]:
        """For each request, for each completion, the log-probability of each of its tokens."""
