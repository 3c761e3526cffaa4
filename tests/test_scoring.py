"""Scoring: the math on arrays (fast) and the vLLM engine against a plain forward pass (slow)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labelq.scoring import (
    Item,
    ItemError,
    ItemResult,
    Scorer,
    label_scores,
    normalize_completions,
    summarize,
)
from labelq.spec import parse_spec
from tests.reference import reference_logprob

TOLERANCE = 1e-4


# -- math ----------------------------------------------------------------------------------------
def test_summarize_matches_definitions() -> None:
    scores = np.array([[-1.0, -2.0, -4.0], [-3.0, -3.0, -3.0]])
    bias = np.array([0.0, 0.5, 0.0])
    out = summarize(scores, bias)
    for i, row in enumerate(scores):
        logits = row + bias
        p = np.exp(logits) / np.exp(logits).sum()
        assert np.allclose(out["probs"][i], p)
        assert out["label"][i] == int(np.argmax(p))
        top = sorted(p, reverse=True)
        assert out["confidence"][i] == pytest.approx(top[0])
        assert out["margin"][i] == pytest.approx(top[0] - top[1])
        assert out["entropy"][i] == pytest.approx(-sum(x * math.log(x) for x in p))
        assert out["energy"][i] == pytest.approx(math.log(sum(math.exp(x) for x in row)))


def test_bias_shifts_the_decision() -> None:
    scores = np.array([[-1.0, -1.2]])
    assert summarize(scores)["label"][0] == 0
    assert summarize(scores, np.array([0.0, 0.5]))["label"][0] == 1


def test_label_score_is_logsumexp_of_its_completions() -> None:
    comp = np.array([[-1.0, -2.0, -3.0]])
    out = label_scores(comp, [0, 0, 1], 2)
    assert out[0, 0] == pytest.approx(math.log(math.exp(-1) + math.exp(-2)))
    assert out[0, 1] == pytest.approx(-3.0)


def test_normalizations() -> None:
    sums = np.array([[-6.0, -4.0]])
    tokens = np.array([[3.0, 1.0]])
    chars = np.array([9.0, 4.0])
    assert np.allclose(normalize_completions(sums, tokens, chars, "sum"), sums)
    assert np.allclose(normalize_completions(sums, tokens, chars, "mean"), [[-2.0, -4.0]])
    assert np.allclose(normalize_completions(sums, tokens, chars, "chars"), [[-6 / 9, -1.0]])
    uncond = np.array([-5.0, -1.0])
    assert np.allclose(
        normalize_completions(sums, tokens, chars, "unconditional", uncond), [[-1.0, -3.0]]
    )
    with pytest.raises(ValueError):
        normalize_completions(sums, tokens, chars, "unconditional")


# -- against the reference -----------------------------------------------------------------------
def _spec(labels: dict[str, Any], **extra: Any) -> Any:
    return parse_spec(
        {"name": "t", "template": "Review: {{ text }}\nSentiment:", "labels": labels, **extra}
    )


def _check_against_reference(
    model: Path, scorer: Scorer, spec: Any, texts: list[str], max_prompt: int | None = None
) -> list[ItemResult]:
    builder = scorer.builder(spec)
    results = scorer.score(
        spec, [Item(custom_id=i, fields={"text": t}) for i, t in enumerate(texts)]
    )
    checked = []
    for text, res in zip(texts, results, strict=True):
        assert isinstance(res, ItemResult), res
        prompt = builder.render({"text": text})
        for label, completions in spec.labels.items():
            for completion in completions:
                want = reference_logprob(model, prompt, completion, max_prompt)
                got = res.completion_logprobs[label][completion]
                assert abs(got - want) < TOLERANCE, (text, completion, got, want)
        checked.append(res)
    return checked


TEXTS = [
    "the film is a delight, warm and funny.",
    "a dull, lifeless mess that drags on and on",
    "naïve café résumé — “quoted” 東京 😀",
    "",
]

LABEL_SETS = {
    "single-token": {"positive": " positive", "negative": " negative"},
    "multi-token": {
        "positive": " positive and warm",
        "negative": " negative, sadly",
        "mixed": " 東京 mixed",
    },
    "shared-first-tokens": {"a": " positive great", "b": " positive good", "c": " positive"},
    "several-per-label": {
        "pos": [" positive", " great", " good film"],
        "neg": [" negative", " bad"],
    },
    "boundary-merge": {"yes": ":)", "no": ":(", "meh": " meh"},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LABEL_SETS))
@pytest.mark.parametrize("strategy", ["shared", "per_candidate"])
def test_matches_plain_forward_pass(
    case: str, strategy: str, tiny_model: Path, vllm_backend: Any, per_candidate_backend: Any
) -> None:
    backend = vllm_backend if strategy == "shared" else per_candidate_backend
    _check_against_reference(tiny_model, Scorer(backend), _spec(LABEL_SETS[case]), TEXTS)


@pytest.mark.slow
def test_boundary_merge_is_reported(tiny_model: Path, vllm_backend: Any) -> None:
    """A completion whose first token merges with the prompt's end is scored as tokenised on
    its own and says so; one that does not merge carries no warning. Which completions merge is
    read off the tokenizer directly (the reference's rule), not from labelq's encoder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    spec = parse_spec(
        {
            "name": "t",
            "template": "Sentiment{{ text }}",
            "labels": {"yes": ":)", "no": " meh", "other": "urn"},
        }
    )
    prompt = Scorer(vllm_backend).builder(spec).render({"text": ":"})
    context = tok(prompt)["input_ids"]
    merging = {
        c
        for cs in spec.labels.values()
        for c in cs
        if tok(prompt + c)["input_ids"][: len(context)] != context
    }
    assert merging == {":)"}, "the case needs one merging and two clean completions"
    (res,) = Scorer(vllm_backend).score(spec, [Item(fields={"text": ":"})])
    assert isinstance(res, ItemResult)
    assert res.warnings == [
        "completion ':)' merged with the prompt's last token; scored as tokenised on its own"
    ]
    want = reference_logprob(tiny_model, prompt, ":)")
    assert abs(res.completion_logprobs["yes"][":)"] - want) < TOLERANCE


@pytest.mark.slow
def test_truncation_by_spec_and_by_model_length(tiny_model: Path, vllm_backend: Any) -> None:
    scorer = Scorer(vllm_backend)
    long_text = "the film is a delight, warm and funny. " * 40
    spec = _spec(LABEL_SETS["multi-token"], max_input_tokens=64)
    (res,) = _check_against_reference(tiny_model, scorer, spec, [long_text], max_prompt=64)
    assert res.truncated and res.prompt_tokens == 64
    assert any("truncated" in w for w in res.warnings)
    # Longer than the engine's context (512 in tests): truncated to leave room for the longest
    # completion and the one token the engine generates.
    very_long = "warm and funny " * 400
    spec2 = _spec(LABEL_SETS["multi-token"])
    builder = scorer.builder(spec2)
    room = (
        vllm_backend.max_model_len
        - 1
        - max(len(c) for c in builder.encode([builder.render({"text": very_long})])[0].completions)
    )
    (res2,) = _check_against_reference(tiny_model, scorer, spec2, [very_long], max_prompt=room)
    assert res2.truncated and res2.prompt_tokens == room
    (short,) = scorer.score(spec2, [Item(fields={"text": "short"})])
    assert isinstance(short, ItemResult) and not short.truncated


@pytest.mark.slow
def test_result_fields_and_extra_fields_kept(vllm_backend: Any) -> None:
    spec = _spec(LABEL_SETS["several-per-label"], label_bias={"neg": 0.25}, normalization="mean")
    items = [Item(custom_id="a", fields={"text": "good", "source": {"x": [1, 2]}, "n": 3})]
    (res,) = Scorer(vllm_backend).score(spec, items)
    assert isinstance(res, ItemResult)
    assert res.custom_id == "a" and res.extra == {"source": {"x": [1, 2]}, "n": 3}
    assert set(res.probs) == {"pos", "neg"} and math.isclose(sum(res.probs.values()), 1.0)
    assert res.label == max(res.probs, key=res.probs.__getitem__)
    assert res.confidence == pytest.approx(max(res.probs.values()))
    # Recompute from the stored raw completion log-probs: mean normalisation, LSE, bias, softmax.
    tok = vllm_backend.tokenizer
    builder = Scorer(vllm_backend).builder(spec)
    enc = builder.encode([builder.render({"text": "good"})])[0]
    counts = dict(zip(builder.completion_texts, (len(c) for c in enc.completions), strict=True))
    assert tok is not None
    scores = {
        label: math.log(sum(math.exp(v / counts[c]) for c, v in comps.items()))
        for label, comps in res.completion_logprobs.items()
    }
    assert scores == pytest.approx(res.logprobs, abs=1e-9)
    z = {k: v + spec.label_bias.get(k, 0.0) for k, v in scores.items()}
    total = sum(math.exp(v) for v in z.values())
    assert res.probs == pytest.approx({k: math.exp(v) / total for k, v in z.items()})
    assert res.energy == pytest.approx(math.log(sum(math.exp(v) for v in scores.values())))


@pytest.mark.slow
def test_unconditional_subtracts_content_free_logprob(tiny_model: Path, vllm_backend: Any) -> None:
    spec = _spec(LABEL_SETS["multi-token"], normalization="unconditional")
    scorer = Scorer(vllm_backend)
    (res,) = scorer.score(spec, [Item(fields={"text": "warm and funny"})])
    assert isinstance(res, ItemResult)
    content_free = scorer.builder(spec).content_free_prompt()
    assert content_free == "Review: \nSentiment:"
    for label, (completion,) in spec.labels.items():
        want = res.completion_logprobs[label][completion] - reference_logprob(
            tiny_model, content_free, completion
        )
        assert abs(res.logprobs[label] - want) < TOLERANCE


@pytest.mark.slow
def test_bad_item_is_an_error_and_the_rest_go_on(vllm_backend: Any) -> None:
    spec = _spec(LABEL_SETS["single-token"])
    items = [
        Item(custom_id=1, fields={"text": "ok"}),
        Item(custom_id=2, fields={"txt": "x"}, line=7),
    ]
    ok, bad = Scorer(vllm_backend).score(spec, items)
    assert isinstance(ok, ItemResult) and ok.custom_id == 1
    assert isinstance(bad, ItemError) and bad.custom_id == 2 and bad.line == 7
    assert bad.field == "text" and "text" in bad.error


@pytest.mark.slow
def test_scores_do_not_depend_on_batch_size(vllm_backend: Any) -> None:
    spec = _spec(LABEL_SETS["shared-first-tokens"])
    items = [Item(fields={"text": f"item number {i} " * (i % 7 + 1)}) for i in range(20)]
    scorer = Scorer(vllm_backend)
    one = scorer.score(spec, items, batch_size=1)
    many = scorer.score(spec, items, batch_size=20)
    for a, b in zip(one, many, strict=True):
        assert isinstance(a, ItemResult) and isinstance(b, ItemResult)
        for label in a.completion_logprobs:
            for c, v in a.completion_logprobs[label].items():
                assert abs(v - b.completion_logprobs[label][c]) < TOLERANCE


@pytest.mark.slow
def test_chat_template_and_few_shot(tiny_model: Path, vllm_backend: Any) -> None:
    spec = _spec(
        LABEL_SETS["multi-token"],
        chat=True,
        few_shot=[{"text": "lovely", "label": "positive"}, {"text": "awful", "label": "negative"}],
    )
    scorer = Scorer(vllm_backend)
    prompt = scorer.builder(spec).render({"text": "fine"})
    assert prompt.startswith("<s><|user|>\nReview: lovely\nSentiment: positive and warm\n\n")
    assert prompt.endswith("<|assistant|>\n")
    enc = scorer.builder(spec).encode([prompt])[0]
    assert enc.prompt.count(vllm_backend.tokenizer.bos_token_id) == 1
    _check_against_reference(tiny_model, scorer, spec, ["fine"])
