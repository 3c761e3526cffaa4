"""The classifier spec: parsing, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelq.errors import SpecError
from labelq.spec import load_spec, loads_spec, parse_spec

BASE = {
    "name": "sst2-sentiment",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " great"], "negative": " negative"},
}


def spec_with(**changes: object) -> dict[str, object]:
    return {**BASE, **changes}


def test_yaml_spec_from_the_issue(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(
        """
name: sst2-sentiment
model: /models/qwen2.5-1.5b
template: "Review: {{ text }}\\nSentiment:"
labels:
  positive: [" positive", " great"]
  negative: " negative"
normalization: sum
label_bias: {positive: 0.0}
few_shot: []
chat: false
max_input_tokens: null
"""
    )
    spec = load_spec(path)
    assert spec.labels == {"positive": [" positive", " great"], "negative": [" negative"]}
    assert spec.template_variables == {"text"}
    assert spec.bias_vector() == [0.0, 0.0]


def test_json_spec(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec_with(label_bias={"negative": -0.5})))
    assert load_spec(path).bias_vector() == [0.0, -0.5]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"labels": {"only": " one"}}, "labels", "at least two labels"),
        ({"labels": {"a": " x", "b": ""}}, "labels", "empty completion"),
        ({"labels": {"a": " x", "b": [" y", " x"]}}, "labels", "share the completion"),
        ({"labels": {"a": " x", "b": []}}, "labels", "no completions"),
        ({"template": "Review: {{ text }\nSentiment:"}, "template", "syntax error on line"),
        ({"template": "{% for x in %}"}, "template", "syntax error"),
        ({"name": "Bad Name"}, "name", "pattern"),
        ({"normalization": "max"}, "normalization", "sum"),
        ({"label_bias": {"neutral": 1.0}}, "label_bias.neutral", "unknown label"),
        ({"few_shot": [{"text": "a", "label": "neutral"}]}, "few_shot.0.label", "unknown label"),
        ({"few_shot": [{"txt": "a", "label": "positive"}]}, "few_shot.0", "template variable"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"max_input_tokens": 0}, "max_input_tokens", "greater than or equal"),
    ],
)
def test_errors_name_the_field(changes: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(**changes))
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def test_duplicate_labels_in_yaml_and_json() -> None:
    yaml_text = 'name: x\ntemplate: "{{ text }}"\nlabels:\n  a: " a"\n  b: " b"\n  a: " c"\n'
    with pytest.raises(SpecError) as err:
        loads_spec(yaml_text)
    assert err.value.field == "a" and "duplicate key 'a' (line 6)" in str(err.value)
    json_text = '{"name": "x", "template": "{{ text }}", "labels": {"a": " a", "a": " b"}}'
    with pytest.raises(SpecError, match="duplicate key 'a'"):
        loads_spec(json_text, format="json")


def test_unparseable_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot parse"):
        loads_spec("name: [unclosed")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="mapping"):
        loads_spec("- a list")


def test_template_sandbox_blocks_attribute_escape() -> None:
    from labelq.prompts import PromptBuilder

    spec = parse_spec(spec_with(template="{{ text.__class__.__mro__ }}"))

    class _Tok:
        bos_token = None
        bos_token_id = None
        eos_token_id = 0

    from labelq.errors import InputError

    with pytest.raises(InputError, match="template failed"):
        PromptBuilder(spec, _Tok()).render({"text": "x"})  # type: ignore[arg-type]
