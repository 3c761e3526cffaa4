"""A scheduled classification pipeline: what it reads, when, and where it writes.

Checked when it is stored, so a bad cron expression, time zone or query is a 4xx naming the
field, not a failure at 3 a.m. URLs may name environment variables (`${NEWS_DB_URL}`), read
from the service's environment when the pipeline runs; credentials are never shown back.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labelq.errors import InputError, SpecError, field_of
from labelq.spec import NAME_PATTERN

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def resolve_env(text: str, field: str) -> str:
    """`${NAME}` replaced by the environment's value; a missing variable names the field."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise InputError(f"environment variable {name} is not set", field=field)
        return os.environ[name]

    return _ENV.sub(value, text)


def mask_url(url: str) -> str:
    """A URL fit to show: `${VARS}` as written, a literal password replaced by ***."""
    if _ENV.search(url):
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = Field(None, description="five fields: minute hour day month weekday")
    timezone: str = "UTC"
    every: float | None = Field(None, gt=0, description="seconds between runs")

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give either cron (with timezone) or every (seconds)")
        return self

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            message = f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)"
            raise ValueError(message) from None
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        fields = value.split()
        if len(fields) != 5:
            raise ValueError(f"a cron expression has 5 fields, {value!r} has {len(fields)}")
        from celery.schedules import crontab

        minute, hour, day, month, weekday = fields
        try:
            crontab(minute, hour, weekday, day, month)
        except Exception as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value


class SqlSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["sql"]
    url: str = Field(description="SQLAlchemy URL; ${NAME} reads the environment")
    table: str | None = Field(None, pattern=IDENTIFIER)
    query: str | None = Field(None, description="a read-only SELECT")
    key: str = Field(pattern=IDENTIFIER)
    watermark: str | None = Field(None, pattern=IDENTIFIER, description="increasing column")
    fields: dict[str, str] = Field(description="template field -> column")
    page_size: int = Field(1000, ge=1, le=100_000)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give either table or query")
        return self

    @field_validator("query")
    @classmethod
    def _read_only(cls, value: str | None) -> str | None:
        if value is None:
            return value
        text = value.strip().rstrip(";").strip()
        if ";" in text:
            raise ValueError("the query must be one statement")
        if not re.match(r"(?is)^\s*(select|with)\b", text):
            raise ValueError("the query must be read-only: a SELECT (or WITH ... SELECT)")
        if re.search(r"(?i)\b(insert|update|delete|drop|alter|create|truncate|grant)\b", text):
            raise ValueError("the query must be read-only: it may not change data")
        return text


class FilesSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["files"]
    path: str
    glob: str = "*.jsonl"
    format: Literal["jsonl", "csv", "parquet"] | None = None
    key: str | None = Field(None, description="column holding each record's id")
    fields: dict[str, str] = Field(default_factory=dict, description="template field -> column")
    settle_seconds: float = Field(10, ge=0, description="a file modified since waits")


class SqlSink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["sql"]
    url: str
    table: str = Field(pattern=IDENTIFIER)


class FilesSink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["files"]
    path: str
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"


class PipelineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_size: int | None = Field(None, ge=1)
    calibration: str = Field("active", description="active | none | stored | <calibration id>")


Source = Annotated[SqlSource | FilesSource, Field(discriminator="kind")]
Sink = Annotated[SqlSink | FilesSink, Field(discriminator="kind")]


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, max_length=128)
    classifier: str
    version: int | None = Field(None, ge=1)
    schedule: Schedule
    source: Source
    sink: Sink | None = None
    options: PipelineOptions = Field(default_factory=lambda: PipelineOptions())
    enabled: bool = True
    webhook: str | None = Field(None, pattern=r"^https?://", description="POSTed on failed runs")

    def shown(self) -> dict[str, Any]:
        """The spec with credentials masked."""
        data = self.model_dump(mode="json")
        for part in ("source", "sink"):
            if data.get(part) and "url" in data[part]:
                data[part]["url"] = mask_url(data[part]["url"])
        return data


def parse_pipeline(data: Any) -> PipelineSpec:
    """Validate a pipeline from plain data, raising `SpecError` naming the field."""
    if not isinstance(data, dict):
        raise SpecError("a pipeline must be a mapping of fields")
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        if len(loc) > 1 and loc[0] in ("source", "sink") and loc[1] in ("sql", "files"):
            del loc[1]  # the union's tag is not a field the user wrote
        field = field_of({"loc": tuple(loc)})
        message = str(first["msg"]).removeprefix("Value error, ")
        raise SpecError(f"{field}: {message}" if field else message, field=field) from None
