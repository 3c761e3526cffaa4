"""Scoring speed: the shared strategy versus a plain prefill and versus per-candidate requests.

Builds a random Llama of about 30M parameters, makes prompts of about 350 tokens from SST-2
sentences and scores 4 labels. Every configuration runs in this one process on one engine,
interleaved and repeated, with the prefix cache emptied before each run; the script prints each
time as a ratio to the plain prefill of the same prompts (the machine is noisy; ratios are what
to read). A benchmark, not a test: it asserts nothing.

    .venv/bin/python bench/scoring.py [--prompts 64] [--repeats 3] [--block-size 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "stsa.binary.dev"

SINGLE = {
    "positive": " positive",
    "negative": " negative",
    "neutral": " neutral",
    "mixed": " mixed",
}
MULTI = {
    "very-positive": " very positive indeed",
    "positive": " positive, mostly",
    "negative": " very negative indeed",
    "mixed": " mixed feelings overall",
}


def sentences() -> list[str]:
    if SST2.exists():
        return [line.split(" ", 1)[1].strip() for line in SST2.read_text().splitlines() if line]
    return [f"sentence {i} about a film that was fine and long enough to read" for i in range(500)]


def make_texts(tokenizer: Any, n: int, target_tokens: int) -> list[str]:
    pool, texts, i = sentences(), [], 0
    for _ in range(n):
        parts: list[str] = []
        while len(tokenizer("Review: " + " ".join(parts))["input_ids"]) < target_tokens:
            parts.append(pool[i % len(pool)])
            i += 1
        texts.append(" ".join(parts))
    return texts


def main() -> None:
    from labelq import logs

    logs.configure()  # as every labelq command: the engine's own lines at WARNING
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=350, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--block-size", type=int, default=None, help="KV block size")
    parser.add_argument(
        "--skip-precision", action="store_true", help="skip bfloat16 vs float32 (a second engine)"
    )
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "labelq-bench-model"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from labelq.backends.vllm_backend import VllmBackend
    from labelq.demo_model import build_demo_model
    from labelq.scoring import Item, Scorer
    from labelq.settings import Settings
    from labelq.spec import parse_spec

    model = build_demo_model(args.model_dir, "bench")
    block = {"block_size": args.block_size} if args.block_size else {}
    settings = Settings(dtype="float32", kv_cache_gib=2, max_model_len=1024, **block)
    shared = VllmBackend(str(model), settings, strategy="shared")
    baseline = VllmBackend(str(model), settings, strategy="per_candidate")
    llm = shared.llm
    baseline._llm = llm
    n_params = sum(
        p.numel()
        for p in __import__("safetensors.torch")
        .torch.load_file(str(model / "model.safetensors"))
        .values()
    )

    texts = make_texts(shared.tokenizer, args.prompts, args.tokens)
    items = [Item(custom_id=i, fields={"text": t}) for i, t in enumerate(texts)]
    template = "Review: {{ text }}\nSentiment:"
    single = parse_spec({"name": "single", "template": template, "labels": SINGLE})
    multi = parse_spec({"name": "multi", "template": template, "labels": MULTI})
    scorer, base_scorer = Scorer(shared), Scorer(baseline)
    builder = scorer.builder(single)
    prompt_ids = [e.prompt for e in builder.encode([builder.render(i.fields) for i in items])]
    lengths = [len(p) for p in prompt_ids]
    multi_builder = scorer.builder(multi)
    single_lengths = {
        len(c) for c in builder.encode([builder.render(items[0].fields)])[0].completions
    }
    if single_lengths != {1}:
        raise SystemExit(f"the single-token labels are not single tokens here: {single_lengths}")
    tokens_per_label = [
        len(c) for c in multi_builder.encode([multi_builder.render(items[0].fields)])[0].completions
    ]

    def prefill() -> None:
        llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompt_ids],
            SamplingParams(max_tokens=1, detokenize=False),
            use_tqdm=False,
        )

    runs = {
        "prefill": prefill,
        "shared, single-token labels": lambda: scorer.score(single, items, batch_size=len(items)),
        "shared, multi-token labels": lambda: scorer.score(multi, items, batch_size=len(items)),
        "per-candidate, multi-token labels": lambda: base_scorer.score(
            multi, items, batch_size=len(items)
        ),
    }
    for run in runs.values():  # warm up every path once
        llm.reset_prefix_cache()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            llm.reset_prefix_cache()
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)

    precision: dict[str, float] = {}
    if not args.skip_precision:
        precision = compare_precision(args, model, settings, shared, single, items)
    shared.close()

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(
        f"\nmodel: {n_params / 1e6:.1f}M parameters; {len(items)} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens (mean {statistics.mean(lengths):.0f}); 4 labels; "
        f"multi-token label lengths {tokens_per_label}; block size "
        f"{llm.llm_engine.vllm_config.cache_config.block_size}; median of {args.repeats}"
    )
    print(f"{'run':<36}{'seconds':>9}{'vs prefill':>12}")
    for name, t in med.items():
        print(f"{name:<36}{t:>9.2f}{t / med['prefill']:>12.3f}")
    single_ratio = med["shared, single-token labels"] / med["prefill"]
    multi_ratio = med["shared, multi-token labels"] / med["prefill"]
    speedup = med["per-candidate, multi-token labels"] / med["shared, multi-token labels"]
    print(f"\nsingle-token labels vs prefill: {single_ratio:.3f}  (target <= 1.05)")
    print(f"multi-token labels vs prefill:  {multi_ratio:.3f}  (target <= 1.5)")
    print(f"per-candidate / shared, multi:  {speedup:.2f}x  (target >= 2.5)")
    if precision:
        print(
            f"\nprecision (single-token labels, same prompts, median of {args.repeats}): "
            f"labelq's default here is {precision['default']}"
        )
        print(f"  bfloat16 (opt-in; vLLM's own default) / float32 time: {precision['ratio']:.2f}x")
        print(f"  largest |log-prob difference| bfloat16 vs float32: {precision['max_diff']:.2e}")


def compare_precision(
    args: argparse.Namespace,
    model: Path,
    settings: Any,
    float32: Any,
    spec: Any,
    items: list[Any],
) -> dict[str, Any]:
    """bfloat16 (an opt-in; vLLM's own `dtype="auto"` for this float32 checkpoint) against
    float32 (labelq's default for it), on two engines in this process, runs interleaved."""
    from labelq.backends.precision import engine_dtype
    from labelq.backends.vllm_backend import VllmBackend
    from labelq.scoring import ItemResult, Scorer

    bf16 = VllmBackend(str(model), settings.model_copy(update={"dtype": "bfloat16"}))
    scorers = {"float32": Scorer(float32), "bfloat16": Scorer(bf16)}
    results = {name: sc.score(spec, items, batch_size=len(items)) for name, sc in scorers.items()}
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for _ in range(args.repeats):
        for name, sc in scorers.items():
            start = time.perf_counter()
            sc.score(spec, items, batch_size=len(items))
            times[name].append(time.perf_counter() - start)
    diffs = [
        abs(a.logprobs[label] - b.logprobs[label])
        for a, b in zip(results["float32"], results["bfloat16"], strict=True)
        if isinstance(a, ItemResult) and isinstance(b, ItemResult)
        for label in a.logprobs
    ]
    bf16.close()
    ratio = statistics.median(times["bfloat16"]) / statistics.median(times["float32"])
    return {"ratio": ratio, "max_diff": max(diffs), "default": engine_dtype("auto", str(model))[0]}


if __name__ == "__main__":
    main()
