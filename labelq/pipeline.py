"""A scheduled classification pipeline: what it reads, when, and where it writes.

Checked when it is stored, so a bad cron expression, time zone or query is a 4xx naming the
field, not a failure at 3 a.m. A pipeline reaches databases and folders only by the names the
operator gave them (`LABELQ_PIPELINE_CONNECTIONS`, `LABELQ_PIPELINE_ROOTS`, see
`labelq.targets`): no URL, absolute path, `..` or `${VARIABLE}` is taken from a tenant.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from labelq.errors import SpecError, field_of
from labelq.spec import NAME_PATTERN

IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
# The name of an operator's connection or root.
TARGET_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"


def mask_url(url: str) -> str:
    """A URL fit to show: a password, and every query value, replaced by ***."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name, sep, _ = user.partition(":")
        netloc = f"{name}:***@{host}" if sep else f"{user}@{host}"
    query = urlencode([(k, "***") for k, _ in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def relative_path(value: str) -> str:
    """A folder or file path a tenant gives inside an operator's root: relative, no `..`, no
    `${...}`, no backslash or NUL."""
    if value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", value):
        raise ValueError("a path inside the root, not an absolute one")
    if "\\" in value or "\x00" in value:
        raise ValueError("a path of plain / separated parts")
    if any(part == ".." for part in value.split("/")):
        raise ValueError("a path inside the root: no '..'")
    return value.strip("/")


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
    connection: str = Field(pattern=TARGET_NAME, description="a LABELQ_PIPELINE_CONNECTIONS name")
    table: str | None = Field(None, pattern=IDENTIFIER)
    query: str | None = Field(None, description="a read-only SELECT")
    key: str = Field(pattern=IDENTIFIER)
    watermark: str | None = Field(None, pattern=IDENTIFIER, description="increasing column")
    fields: dict[str, str] = Field(description="template field -> column")
    page_size: int = Field(1000, ge=1, le=100_000)
    overlap: float | None = Field(
        None,
        ge=0,
        description="how far behind the watermark each run reads again, in the watermark's "
        "units (seconds for a time): a row whose id or time was taken before a later one "
        "committed, but that committed after a run, lands there. Keys already delivered with "
        "the same content are not classified again. Default 1000 for a number, 600 (s) for a "
        "time; 0 turns it off; a text watermark has none.",
    )
    lag: float | None = Field(
        None,
        ge=0,
        description="a time watermark: each run reads only rows at least this many seconds "
        "old by the source database's clock, so a writer whose transaction took its time "
        "before a later one committed is not passed. Default 120; 0 turns it off; a number "
        "watermark has none (the overlap covers it, or read by snapshot).",
    )
    consistency: Literal["overlap", "snapshot"] = Field(
        "overlap",
        description="`overlap`: the lag and the overlap window behind the watermark, "
        "de-duplicated by key (any database). `snapshot` (PostgreSQL, exact): the watermark "
        "column is an xid8 the writer's transaction sets (DEFAULT pg_current_xact_id(), and "
        "on update by a trigger); a run reads only rows whose transaction ended before its "
        "snapshot, so no late commit is passed and no overlap is read.",
    )

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give either table or query")
        return self

    @model_validator(mode="after")
    def _snapshot(self) -> SqlSource:
        if self.consistency == "snapshot":
            if self.watermark is None:
                raise ValueError("consistency `snapshot` reads by a watermark column: name it")
            if self.overlap or self.lag:
                raise ValueError("consistency `snapshot` is exact: it takes no overlap or lag")
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
    root: str = Field(pattern=TARGET_NAME, description="a LABELQ_PIPELINE_ROOTS name")
    path: str = Field("", max_length=1024, description="a folder inside the root")
    glob: str = Field("*.jsonl", max_length=200, pattern=r"^[^/\\]+$")
    format: Literal["jsonl", "csv", "parquet"] | None = None
    key: str | None = Field(None, description="column holding each record's id")
    fields: dict[str, str] = Field(default_factory=dict, description="template field -> column")
    settle_seconds: float = Field(10, ge=0, description="a file modified since waits")

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return relative_path(value)


class SqlSink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["sql"]
    connection: str = Field(pattern=TARGET_NAME, description="a LABELQ_PIPELINE_CONNECTIONS name")
    table: str = Field(pattern=IDENTIFIER)


class FilesSink(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["files"]
    root: str = Field(pattern=TARGET_NAME, description="a LABELQ_PIPELINE_ROOTS name")
    path: str = Field("", max_length=1024, description="a folder inside the root")
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return relative_path(value)


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
        """The spec as shown back: the webhook's password and query values masked."""
        data = self.model_dump(mode="json")
        if data.get("webhook"):
            data["webhook"] = mask_url(data["webhook"])
        return data


def _variables(value: Any, where: str = "") -> str | None:
    """The field of the first string holding `${...}`, anywhere in `value`."""
    if isinstance(value, str):
        return where if "${" in value else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _variables(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_pipeline(data: Any) -> PipelineSpec:
    """Validate a pipeline from plain data, raising `SpecError` naming the field. A tenant's
    pipeline holds no `${VARIABLE}`: the service's environment is the operator's."""
    if not isinstance(data, dict):
        raise SpecError("a pipeline must be a mapping of fields")
    field = _variables(data)
    if field is not None:
        raise SpecError(
            f"{field}: ${{...}} is not read from a pipeline: the operator names connections "
            "(LABELQ_PIPELINE_CONNECTIONS) and folders (LABELQ_PIPELINE_ROOTS)",
            field=field,
        )
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
