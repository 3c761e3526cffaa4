"""Build a small random Llama model and a BPE tokenizer on the spot.

Tests, benchmarks and the embedded demo use it: nothing is downloaded. Its weights are random, so
its labels mean nothing; it exercises the real engine and the real scoring path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

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


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE with `<unk>`, `<s>`, `</s>`, trained on `texts` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def hf_tokenizer(tokenizer: Any) -> Any:
    """A `tokenizers` BPE with `<unk>`, `<s>`, `</s>` as a Hugging Face fast tokenizer: a BOS
    starts every encoded text (as Llama's does), and a minimal chat template lets specs with
    `chat: true` run too."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    bos = tokenizer.token_to_id("<s>")
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
    fast.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    return fast


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
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, intermediate, bpe_vocab = _SIZES[size]
    fast = hf_tokenizer(train_bpe(_corpus(), bpe_vocab))
    bos = fast.bos_token_id

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
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float().eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    marker.write_text(json.dumps(stamp))
    return path


def default_model(
    configured: str | None, home: Path, data_dir: Path | None = None, announce: bool = True
) -> str:
    """The configured model or, when none is, the demo model under `home`: trained on SST-2's
    training split when the data is at hand (once; cached), else a random one, said plainly."""
    import sys

    if configured:
        return configured
    sst2 = find_sst2(data_dir)
    if sst2 is not None:
        path = home / "demo-model-sst2"
        if announce and not (path / "labelq-demo.json").exists():
            print(
                f"No model configured (LABELQ_MODEL is unset): training a small demo sentiment "
                f"model on the SST-2 training split ({sst2}), once; it is kept in {path}.",
                file=sys.stderr,
            )
        return str(train_demo_model(path, sst2, progress=announce))
    path = home / "demo-model"
    if announce:
        print(
            f"No model configured (LABELQ_MODEL is unset) and no SST-2 data found: using a small "
            f"RANDOM demo model at {path}. It runs the real engine, but its labels are not "
            f"meaningful (set LABELQ_DATA_DIR to a folder holding sst2/ to train a real one).",
            file=sys.stderr,
        )
    return str(build_demo_model(path, "tiny"))


# -- a demo model that really classifies ----------------------------------------------------------
DEMO_TEMPLATE = "Review: {text}\nSentiment:"
DEMO_LABELS = {1: " positive", 0: " negative"}
# (hidden, layers, heads, intermediate, bpe vocabulary, epochs)
_TRAINED = (128, 2, 2, 384, 4000, 6)


def read_sst2(path: Path) -> list[tuple[int, str]]:
    """(label, sentence) pairs of an SST-2 file: `<label> <sentence>` per line."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition(" ")
        if text:
            rows.append((int(label), text))
    return rows


def find_sst2(data_dir: Path | None) -> Path | None:
    """The SST-2 folder: `data_dir`/sst2, or `../shared/data/sst2` beside a source checkout."""
    candidates = [data_dir / "sst2"] if data_dir else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2")
    for folder in candidates:
        if (folder / "stsa.binary.train").is_file():
            return folder
    return None


def train_demo_model(path: str | Path, sst2: Path, seed: int = 0, progress: bool = True) -> Path:
    """Train a tiny Llama and its BPE tokenizer on the SST-2 *training* split only (the dev and
    test splits are for measuring), as a language model over `DEMO_TEMPLATE` + label word, with
    extra weight on the label word. Deterministic for a seed; a few minutes on 2 cores. Does
    nothing if a model trained with the same settings and data is already at `path`."""
    import hashlib

    path = Path(path)
    train_file = sst2 / "stsa.binary.train"
    digest = hashlib.sha256(train_file.read_bytes()).hexdigest()[:16]
    stamp = {"kind": "sst2", "seed": seed, "data": digest, "shape": list(_TRAINED), "format": 1}
    marker = path / "labelq-demo.json"
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return path

    import torch
    from tqdm import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, intermediate, bpe_vocab, epochs = _TRAINED
    rows = read_sst2(train_file)
    texts = [DEMO_TEMPLATE.format(text=text) + DEMO_LABELS[label] for label, text in rows]

    fast = hf_tokenizer(train_bpe(texts, bpe_vocab))
    bos, eos = fast.bos_token_id, fast.eos_token_id

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=-(-len(fast) // 64) * 64,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = LlamaForCausalLM(config).float()

    # The label word's tokens, as labelq scores them: what follows the prompt's own tokens.
    encoded = []
    for label, text in rows:
        prompt_ids = fast(DEMO_TEMPLATE.format(text=text))["input_ids"][:400]
        full = fast(DEMO_TEMPLATE.format(text=text) + DEMO_LABELS[label])["input_ids"]
        label_ids = full[len(prompt_ids) :] if full[: len(prompt_ids)] == prompt_ids else []
        encoded.append((prompt_ids + label_ids, len(prompt_ids)))

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    batch_size = 32
    steps = epochs * -(-len(encoded) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    order_rng = torch.Generator().manual_seed(seed)
    model.train()
    with tqdm(
        total=steps, unit="step", desc="training the demo model", disable=not progress
    ) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=order_rng).tolist()
            for start in range(0, len(order), batch_size):
                batch = [encoded[i] for i in order[start : start + batch_size]]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), eos, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                weights = torch.zeros((len(batch), width))
                for row, (ids, prompt_len) in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    mask[row, : len(ids)] = 1
                    weights[row, 1 : len(ids)] = 0.1  # the language: a little
                    weights[row, prompt_len : len(ids)] = 1.0  # the label word: mostly
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
                losses = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    input_ids[:, 1:].reshape(-1),
                    reduction="none",
                ).view(len(batch), -1)
                loss = (losses * weights[:, 1:]).sum() / weights[:, 1:].sum()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
                bar.update()
    model.eval()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    fast.save_pretrained(path)
    marker.write_text(json.dumps(stamp))
    return path
