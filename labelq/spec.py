"""The classifier spec: a prompt template and labels written as candidate completions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from labelq.errors import SpecError, field_of

Normalization = Literal["sum", "mean", "chars", "unconditional"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"

# What one spec may hold: a spec is checked and stored by a request, and every item of every job
# renders its template, so none of these may be unbounded.
MAX_LABELS = 200
MAX_COMPLETIONS = 50  # per label
MAX_FEW_SHOT = 100
MAX_TEMPLATE_CHARS = 50_000
MAX_PROMPT_CHARS = 200_000  # a prompt the template renders for the check's synthetic item
RENDER_SECONDS = 2.0  # the check's render, few-shot examples included
YAML_NODES = 20_000


# Validation context of a spec read back from the database: it was checked in full when it
# was stored (`ClassifierSpec.model_validate(data, context=STORED)`), so its template is not
# parsed again on every read (a Jinja parse was a fifth of a results page's time).
STORED: dict[str, bool] = {"stored": True}


def jinja_environment() -> ImmutableSandboxedEnvironment:
    """The one Jinja2 environment templates are compiled in: sandboxed, strict about undefined
    names, and keeping the text exactly as written (no trailing-newline stripping)."""
    return ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


class FewShotExample(BaseModel):
    """A worked example rendered before the input: the template's fields plus its gold label."""

    model_config = ConfigDict(extra="allow", frozen=True)
    label: str

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ClassifierSpec(BaseModel):
    """What a user defines. Immutable; validated as a whole so errors name the field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    model: str | None = Field(
        default=None, description="Local path or hub id; the worker's default model when unset."
    )
    template: str = Field(min_length=1, max_length=MAX_TEMPLATE_CHARS)
    labels: dict[str, list[str]] = Field(max_length=MAX_LABELS)
    normalization: Normalization = "sum"
    label_bias: dict[str, float] = Field(default_factory=dict)
    few_shot: list[FewShotExample] = Field(default_factory=list, max_length=MAX_FEW_SHOT)
    few_shot_separator: str = "\n\n"
    chat: bool = False
    max_input_tokens: int | None = Field(default=None, ge=2)

    @field_validator("labels", mode="before")
    @classmethod
    def _completions_as_lists(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(labels) < 2:
            raise ValueError(f"a classifier needs at least two labels, got {len(labels)}")
        owner: dict[str, str] = {}
        for label, completions in labels.items():
            if not label.strip():
                raise ValueError("a label name must not be empty")
            if not completions:
                raise ValueError(f"label '{label}' has no completions")
            if len(completions) > MAX_COMPLETIONS:
                raise ValueError(
                    f"label '{label}' has {len(completions)} completions; at most {MAX_COMPLETIONS}"
                )
            for completion in completions:
                if completion == "":
                    raise ValueError(f"label '{label}' has an empty completion")
                if completion in owner:
                    other = owner[completion]
                    if other == label:
                        raise ValueError(f"label '{label}' lists completion {completion!r} twice")
                    raise ValueError(
                        f"labels '{other}' and '{label}' share the completion {completion!r}"
                    )
                owner[completion] = label
        return labels

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str, info: ValidationInfo) -> str:
        if (info.context or {}).get("stored"):  # parsed when stored; a read needs no reparse
            return template
        try:
            jinja_environment().parse(template)
        except TemplateSyntaxError as exc:
            raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from exc
        return template

    @model_validator(mode="after")
    def _check_references(self) -> ClassifierSpec:
        for label in self.label_bias:
            if label not in self.labels:
                raise SpecError(
                    f"bias for unknown label '{label}'; labels are {sorted(self.labels)}",
                    field=f"label_bias.{label}",
                )
        variables = self.template_variables if self.few_shot else set()
        for i, example in enumerate(self.few_shot):
            if example.label not in self.labels:
                raise SpecError(f"unknown label '{example.label}'", field=f"few_shot.{i}.label")
            missing = variables - set(example.fields())
            if missing:
                raise SpecError(
                    f"example lacks template variable(s) {sorted(missing)}", field=f"few_shot.{i}"
                )
        return self

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)

    @property
    def template_variables(self) -> set[str]:
        """Names the template reads from an item (undeclared variables in Jinja's terms)."""
        return set(meta.find_undeclared_variables(jinja_environment().parse(self.template)))

    def bias_vector(self) -> list[float]:
        return [self.label_bias.get(label, 0.0) for label in self.labels]


def check_template(spec: ClassifierSpec) -> None:
    """Render the template (and few-shot examples) once in the sandbox on a synthetic item
    with every variable it reads: a template the sandbox refuses is refused now, naming the
    field, not item by item at scoring time."""
    from jinja2.exceptions import SecurityError, TemplateError

    sample = dict.fromkeys(spec.template_variables, "sample text")
    try:
        template = jinja_environment().from_string(spec.template)
        with _deadline(RENDER_SECONDS):
            prompts = [template.render(**sample)]
            prompts += [template.render(**example.fields()) for example in spec.few_shot]
    except _TooSlow:
        raise SpecError(
            f"the template takes over {RENDER_SECONDS:g} s to render one item", field="template"
        ) from None
    except SecurityError as exc:
        raise SpecError(
            f"the template is refused by the sandbox: {exc}", field="template"
        ) from None
    except (TemplateError, TypeError, ValueError, AttributeError) as exc:
        raise SpecError(f"the template does not render: {exc}", field="template") from None
    longest = max(len(p) for p in prompts)
    if longest > MAX_PROMPT_CHARS:
        raise SpecError(
            f"the template renders {longest} characters for one item; at most {MAX_PROMPT_CHARS}",
            field="template",
        )


class _TooSlow(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Interrupt Python code run in this block once `seconds` have passed (a template's
    compiled code, looping in the sandbox: nothing else bounds its time)."""
    end = time.monotonic() + seconds

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > end:
            raise _TooSlow
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


def _spec_error_from(exc: ValidationError) -> SpecError:
    """One `SpecError` listing every problem, its field the first one's."""
    problems = []
    first_field = None
    for err in exc.errors():
        field = field_of(err)
        first_field = first_field or field
        message = err["msg"].removeprefix("Value error, ")
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, SpecError):
            field = ctx_error.field or field
            message = ctx_error.message
        problems.append(f"{field}: {message}" if field else message)
    return SpecError("; ".join(problems), field=first_field)


def parse_spec(data: Any) -> ClassifierSpec:
    """Validate a spec from plain data, raising `SpecError` that names the field."""
    if not isinstance(data, dict):
        raise SpecError("a spec must be a mapping of fields")
    try:
        return ClassifierSpec.model_validate(data)
    except ValidationError as exc:
        raise _spec_error_from(exc) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter: two equal keys are an error (YAML silently keeps the last,
    and a spec with two `positive:` labels must not), and so are aliases (a few bytes of
    aliases expand tenfold a level: no spec needs one) and more than YAML_NODES nodes."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self.nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise SpecError(f"YAML aliases are not accepted in a spec (line {mark.line + 1})")
        self.nodes += 1
        if self.nodes > YAML_NODES:
            raise SpecError(f"a spec has at most {YAML_NODES} YAML nodes")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise SpecError(
                    f"duplicate key '{key}' (line {key_node.start_mark.line + 1})", field=str(key)
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"duplicate key '{key}'", field=key)
        out[key] = value
    return out


def loads_spec(text: str, *, format: Literal["yaml", "json"] = "yaml") -> ClassifierSpec:
    """Parse a spec from YAML (a superset of JSON) or strict JSON text."""
    try:
        if format == "json":
            data = json.loads(text, object_pairs_hook=_unique_pairs)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot parse spec: {exc}") from None
    return parse_spec(data)


def load_spec(path: str | Path) -> ClassifierSpec:
    """Load a spec file; `.json` files are parsed as strict JSON, anything else as YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}") from None
    return loads_spec(text, format="json" if path.suffix == ".json" else "yaml")
