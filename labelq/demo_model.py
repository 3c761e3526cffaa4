"""Build a small random Llama model and a BPE tokenizer on the spot.

Tests, benchmarks and the embedded demo use it: nothing is downloaded. Its weights are random, so
its labels mean nothing; it exercises the real engine and the real scoring path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

Size = Literal["tiny", "bench"]

# (hidden, layers, heads, intermediate, bpe vocabulary). head_dim is 64: the CPU attention backend
# does not take every head size. "bench" is about 30M parameters, as bench/scoring.py specifies.
_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (128, 2, 2, 256, 2000),
    "bench": (512, 8, 8, 1536, 4000),
}

_EXTRA_TEXT = """
Review: the film is a delight, warm and funny. Sentiment: positive
Review: a dull, lifeless mess that drags on. Sentiment: negative
Question: what is the capital of France? Answer: location
Question: who wrote Hamlet? Answer: human
Question: how many feet are in a mile? Answer: number
Labels: positive negative neutral great terrible good bad mixed awful excellent
naïve café résumé — “quoted” – 東京 😀 ünïcödé
"""


def _corpus() -> list[str]:
    """Text to train the tokenizer on: the standard library's own docstrings, which every
    Python has, plus a few lines in the shape of prompts."""
    import collections
    import email
    import http
    import json as json_mod
    import logging
    import os
    import re
    import string
    import textwrap
    import types

    # Repeated so that label words ("neutral", "mixed", ...) become single tokens.
    texts = [_EXTRA_TEXT] * 50
    for module in (collections, email, http, json_mod, logging, os, re, string, textwrap):
        for name in dir(module):
            value = getattr(module, name)
            # Submodules show up in dir() only once something imported them: skip them, or the
            # tokenizer (and so the model) would depend on what the process imported before.
            if isinstance(value, types.ModuleType):
                continue
            doc = getattr(value, "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
    return texts


def build_demo_model(path: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a random `LlamaForCausalLM` (float32) and its tokenizer to `path`; return the path.

    Does nothing if a model built with the same settings is already there.
    """
    path = Path(path)
    stamp = {"size": size, "seed": seed, "format": 4}
    marker = path / "labelq-demo.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return path

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hidden, layers, heads, intermediate, bpe_vocab = _SIZES[size]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    # Like Llama's tokenizer config: a BOS token starts every encoded text.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    # A minimal chat template so specs with `chat: true` work on the demo model too.
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )

    vocab = -(-len(fast) // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=4096,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=bos,
        eos_token_id=tokenizer.token_to_id("</s>"),
        pad_token_id=tokenizer.token_to_id("</s>"),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    marker.write_text(json.dumps(stamp))
    return path


def default_model(configured: str | None, home: Path, announce: bool = True) -> str:
    """The configured model, or (when none is) a demo model built under `home`, said plainly."""
    if configured:
        return configured
    path = home / "demo-model"
    if announce:
        import sys

        print(
            f"No model configured (LABELQ_MODEL is unset): using a small RANDOM demo model at "
            f"{path}. It runs the real engine, but its labels are not meaningful.",
            file=sys.stderr,
        )
    return str(build_demo_model(path, "tiny"))
