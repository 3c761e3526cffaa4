"""An independent reference: completion log-probs from a plain transformers forward pass.

It shares no code with labelq's scorer: its own tokenisation (lm-evaluation-harness's rule,
written out again), its own truncation, and the model run by transformers in float32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@cache
def _load(path: str) -> tuple[object, object]:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tok, model


def reference_logprob(
    model_path: Path, prompt: str, completion: str, max_prompt_tokens: int | None = None
) -> float:
    """log P(completion | prompt), summed over the completion's tokens."""
    tok, model = _load(str(model_path))
    context = prompt.rstrip()
    continuation = prompt[len(context) :] + completion
    # A prompt that already starts with BOS (a chat template wrote it) gets no second one.
    special = not context.startswith(tok.bos_token)
    ctx_ids = tok(context, add_special_tokens=special)["input_ids"]
    whole = tok(context + continuation, add_special_tokens=special)["input_ids"]
    if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
        cont_ids = whole[len(ctx_ids) :]
    else:
        cont_ids = tok(continuation, add_special_tokens=False)["input_ids"]
    if max_prompt_tokens is not None and len(ctx_ids) > max_prompt_tokens:
        ctx_ids = ctx_ids[:1] + ctx_ids[len(ctx_ids) - max_prompt_tokens + 1 :]
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # type: ignore[operator]
    start = len(ctx_ids)
    return float(sum(logprobs[start + j - 1, t] for j, t in enumerate(cont_ids)))
