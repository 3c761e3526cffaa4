"""A deterministic scoring backend for fast tests (as lm-evaluation-harness's `DummyLM`).

It runs no model: a completion token's log-probability is a fixed function of the token and
the prompt, so the same request always scores the same, different prompts score differently,
and a prompt that contains a completion's word favours that completion (so a sentiment spec
"works" on text that says "positive"). The tokenizer is a real Hugging Face fast tokenizer over
bytes (no merges), built in milliseconds, so prompts go through labelq's own tokenisation.

Faults can be injected: `fail_marker` makes any request whose prompt contains that text raise
(an item's fault), `poison` makes such a request kill the engine, so that every later call
raises too until a new one is made (as vLLM's EngineCore does: EngineDeadError), `hang` makes
it never answer (a wedged engine), `down` makes every call raise (the engine's fault).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Any

from labelq.backends.base import ScoreRequest


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer with no merges, a BOS token and a small chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from labelq.demo_model import hf_tokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = hf_tokenizer(tokenizer)
    return fast


class FakeBackend:
    """Implements `ScoringBackend` without a model."""

    def __init__(
        self,
        *,
        max_model_len: int | None = 4096,
        fail_marker: str | None = None,
        poison: str | None = None,
        hang: str | None = None,
        down: bool = False,
    ):
        self._tokenizer = byte_tokenizer()
        self._max_model_len = max_model_len
        self.fail_marker = fail_marker
        self.poison = poison
        self.hang = hang
        self.released = threading.Event()  # set it to let a hung call go on
        self.down = down
        self.dead = False
        self.calls = 0

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def max_model_len(self) -> int | None:
        return self._max_model_len

    @property
    def fingerprint(self) -> str:
        """The fake engine's identity: one per fake setting that changes its scores."""
        from labelq.backends.identity import fingerprint

        return fingerprint({"engine": "fake", "max_model_len": self._max_model_len})

    def token_logprobs(self, requests: Sequence[ScoreRequest]) -> list[list[list[float]]]:
        self.calls += 1
        if self.down:
            raise RuntimeError("fake engine is down")
        if self.dead:
            raise RuntimeError("fake engine died earlier (EngineDeadError)")
        out = []
        for request in requests:
            prompt_text = self._tokenizer.decode(request.prompt, skip_special_tokens=True)
            if self.fail_marker is not None and self.fail_marker in prompt_text:
                raise ValueError(f"fake engine refuses prompts containing {self.fail_marker!r}")
            if self.poison is not None and self.poison in prompt_text:
                self.dead = True
                raise RuntimeError("fake engine core died on this prompt")
            if self.hang is not None and self.hang in prompt_text:
                self.released.wait(timeout=60)  # a wedged engine: no answer
                raise RuntimeError("fake engine was killed while it hung")
            out.append(
                [self._completion(request.prompt, prompt_text, c) for c in request.completions]
            )
        return out

    def _completion(
        self, prompt: list[int], prompt_text: str, completion: list[int]
    ) -> list[float]:
        word = self._tokenizer.decode(completion).strip().lower()
        favoured = bool(word) and word in prompt_text.lower()
        values = []
        context = zlib.crc32(bytes(str(prompt), "ascii"))
        for j, token in enumerate(completion):
            unit = (zlib.crc32(f"{context}:{j}:{token}".encode()) % 10_000) / 10_000
            # As a language model: the first token is uncertain, later ones nearly forced.
            value = -1.0 - 3.0 * unit if j == 0 else -0.01 - 0.29 * unit
            if favoured and j == 0:
                value += 3.0  # the completion's own word in the prompt makes it likelier
            values.append(value)
        return values
