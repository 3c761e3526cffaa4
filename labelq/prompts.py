"""From a spec and an item to token ids: prompt rendering and boundary-safe tokenisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jinja2 import Template, UndefinedError
from jinja2.exceptions import SecurityError, TemplateError

from labelq.errors import InputError, SpecError
from labelq.spec import ClassifierSpec, jinja_environment


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer labelq uses."""

    bos_token: str | None
    bos_token_id: int | None
    eos_token_id: int | None

    def __call__(self, text: list[str], add_special_tokens: bool = ...) -> Any: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class EncodedPrompt:
    """One prompt and every completion of the spec, as token ids.

    `completions[i]` are the tokens of the i-th completion in spec order (labels in order, each
    label's completions in order). All share `prompt`, so the prompt is read once.
    """

    prompt: list[int]
    completions: list[list[int]]
    truncated: bool = False
    # Completions whose first token merged with the end of the prompt; they were tokenised on
    # their own instead (lm-evaluation-harness would score them as empty).
    boundary_fallbacks: list[str] = field(default_factory=list)


class PromptBuilder:
    """Renders prompts for one spec and tokenises them the way lm-evaluation-harness does."""

    def __init__(
        self, spec: ClassifierSpec, tokenizer: Tokenizer, max_model_len: int | None = None
    ):
        self.spec = spec
        self.tokenizer = tokenizer
        self.variables = spec.template_variables
        self._template: Template = jinja_environment().from_string(spec.template)
        self.completion_texts: list[str] = [c for cs in spec.labels.values() for c in cs]
        self.completion_labels: list[int] = [
            i for i, cs in enumerate(spec.labels.values()) for _ in cs
        ]
        self._max_model_len = max_model_len
        self._few_shot_prefix = self._render_few_shot()

    # -- rendering -------------------------------------------------------------------------
    def _render_template(self, fields: Mapping[str, Any], where: str) -> str:
        try:
            return self._template.render(**fields)
        except UndefinedError as exc:
            missing = sorted(self.variables - set(fields))
            name = missing[0] if missing else None
            raise InputError(
                f"{where}: missing field {name!r} used by the template"
                if name
                else f"{where}: {exc.message}",
                field=name,
            ) from None
        except (SecurityError, TemplateError, TypeError, ValueError) as exc:
            raise InputError(f"{where}: template failed: {exc}") from None

    def _render_few_shot(self) -> str:
        parts = []
        for i, example in enumerate(self.spec.few_shot):
            try:
                text = self._render_template(example.fields(), f"few_shot.{i}")
            except InputError as exc:
                raise SpecError(exc.message, field=f"few_shot.{i}") from None
            parts.append(text + self.spec.labels[example.label][0])
        return "".join(p + self.spec.few_shot_separator for p in parts)

    def render(self, fields: Mapping[str, Any]) -> str:
        """The full prompt text for one item: few-shot examples, the template, the chat wrapper."""
        text = self._few_shot_prefix + self._render_template(fields, "item")
        if self.spec.chat:
            text = str(
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
                )
            )
        return text

    def content_free_prompt(self) -> str:
        """The template rendered with every field empty, for `unconditional` normalisation."""
        return self.render(dict.fromkeys(self.variables, ""))

    # -- tokenising ------------------------------------------------------------------------
    def _encode(self, texts: Sequence[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        # A fast tokenizer's Rust backend encodes a batch in parallel without the per-call
        # overhead of the Python wrapper; the ids are the same.
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=special)]
        ids = self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        return [list(x) for x in ids]

    def encode(self, prompts: Sequence[str]) -> list[EncodedPrompt]:
        """Tokenise prompts with every completion, in one batched tokenizer call per kind.

        Trailing whitespace of the prompt moves onto the completions; prompt and completion are
        encoded together and the completion is what follows the prompt's own tokens. Where a token
        spans the join, the completion is encoded on its own instead, so that every completion
        shares the prompt's exact token ids. A prompt that already starts with the BOS text (a chat
        template) gets no second BOS.
        """
        bos = self.tokenizer.bos_token
        contexts, moved = [], []
        for prompt in prompts:
            stripped = prompt.rstrip()
            contexts.append(stripped)
            moved.append(prompt[len(stripped) :])
        k = len(self.completion_texts)
        joined = [
            c + m + comp
            for c, m in zip(contexts, moved, strict=True)
            for comp in self.completion_texts
        ]
        # Group texts by whether the tokenizer should add its special tokens (BOS).
        ctx_special = [not (bos and c.startswith(bos)) for c in contexts]
        ctx_ids = self._encode_mixed(contexts, ctx_special)
        joined_ids = self._encode_mixed(joined, [s for s in ctx_special for _ in range(k)])
        alone_cache: dict[str, list[int]] = {}

        out = []
        for i, ctx in enumerate(ctx_ids):
            if not ctx:
                # An empty context: condition on BOS (or EOS where there is no BOS).
                start = self.tokenizer.bos_token_id
                ctx = [start if start is not None else int(self.tokenizer.eos_token_id or 0)]
            completions, fallbacks = [], []
            for j, comp_text in enumerate(self.completion_texts):
                whole = joined_ids[i * k + j]
                tail = whole[len(ctx) :]
                if whole[: len(ctx)] != ctx or not tail:
                    text = moved[i] + comp_text
                    if text not in alone_cache:
                        alone_cache[text] = self._encode([text], special=False)[0]
                    tail = alone_cache[text]
                    fallbacks.append(comp_text)
                completions.append(tail)
            out.append(self._truncate(ctx, completions, fallbacks))
        return out

    def _encode_mixed(self, texts: list[str], special: list[bool]) -> list[list[int]]:
        with_special = [t for t, s in zip(texts, special, strict=True) if s]
        without = [t for t, s in zip(texts, special, strict=True) if not s]
        a, b = iter(self._encode(with_special, True)), iter(self._encode(without, False))
        return [next(a) if s else next(b) for s in special]

    def _truncate(
        self, prompt: list[int], completions: list[list[int]], fallbacks: list[str]
    ) -> EncodedPrompt:
        limit = self.spec.max_input_tokens
        if self._max_model_len is not None:
            # The engine needs room for one generated token after the longest completion.
            room = self._max_model_len - 1 - max(len(c) for c in completions)
            limit = room if limit is None else min(limit, room)
        if limit is None or len(prompt) <= limit:
            return EncodedPrompt(prompt, completions, False, fallbacks)
        if limit < 2:
            raise InputError("the completions leave no room for the prompt in the model's context")
        # Cut from the left of the rendered text; keep the BOS the model expects at position 0.
        bos = self.tokenizer.bos_token_id
        keep = (
            [prompt[0], *prompt[len(prompt) - limit + 1 :]] if prompt[0] == bos else prompt[-limit:]
        )
        return EncodedPrompt(keep, completions, True, fallbacks)
