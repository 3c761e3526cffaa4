"""Every setting labelq reads, in one place: environment variables with the `LABELQ_` prefix
(or a `.env` file). Read once at the edge (CLI, API app, worker) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from labelq.outbound import Policy
from labelq.targets import Connection, Limits, Root


class Retention(BaseModel):
    """How long a job keeps what it holds, in days from its creation (None: for good).
    `results_days`: its inputs, results, custom ids and errors (the numbers the dashboard and
    /metrics count stay); `items_days`: its item rows (the job stays, with its counts)."""

    model_config = ConfigDict(extra="forbid")

    results_days: float | None = Field(None, gt=0)
    items_days: float | None = Field(None, gt=0)
    classifiers: dict[str, Retention] = Field(
        default_factory=dict, description="by classifier name: overrides for its jobs"
    )


class Admission(BaseModel):
    """What one tenant may have in flight (None: no limit)."""

    model_config = ConfigDict(extra="forbid")

    jobs: int | None = Field(None, ge=1, description="unfinished jobs")
    items: int | None = Field(None, ge=1, description="items of unfinished jobs not yet scored")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABELQ_", env_file=".env", extra="ignore")

    # Where things live.
    home: Path = Field(default=Path("var"), description="Working folder of the embedded default.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset: a SQLite file under `home`."
    )
    broker_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Celery broker (Redis) URL."
    )
    data_dir: Path | None = Field(
        default=None,
        description="Folder with sst2/ for the demo model; unset: ../shared/data of a checkout.",
    )

    # The model and its engine.
    model: str | None = Field(default=None, description="Default model path or hub id.")
    model_source: str | None = Field(
        default=None,
        description="Where `labelq model fetch` gets `model` from (a hub id, or a folder): "
        "`model` is then the folder it fills, e.g. /models/NAME.",
    )
    model_revision: str | None = Field(
        default=None,
        description="The hub branch, tag or commit `labelq model fetch` takes (unset: main); a "
        "commit pins the weights every worker loads.",
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models the service serves: paths or hub ids, each optionally `alias=path`, "
        "as a JSON list or separated by commas (`/models/a,b=/models/b`). Unset: only `model`. "
        "A classifier naming another model is refused.",
    )
    dtype: str = Field(
        default="auto",
        description="Engine dtype. `auto`: the checkpoint's own where the hardware computes it "
        "natively, never a lower one (a float32 checkpoint runs float32; a bfloat16 one runs "
        "float32 on a CPU without AVX512-BF16/AMX). bfloat16 or float16 here is an opt-in.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_list(cls, value: Any) -> Any:
        """A JSON list, or one path or several separated by commas."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a JSON list of models: {exc}") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    max_model_len: int | None = Field(
        default=None, description="Longest prompt + completion in tokens; unset: the model's."
    )
    memory_fraction: float = Field(
        default=0.3, gt=0, le=1, description="vLLM gpu_memory_utilization (host memory on CPU)."
    )
    kv_cache_gib: int = Field(default=2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    # Small blocks let completions reuse more of their prompt from the prefix cache (only full
    # blocks are cached); the CPU backend wants multiples of 32. None: the engine's default.
    block_size: int | None = Field(default=32, description="KV-cache block size in tokens.")
    enforce_eager: bool = Field(default=True, description="No CUDA graphs / compilation.")
    in_process_engine: bool = Field(
        default=False,
        description="Run the engine core in the calling process (for daemonic pool children).",
    )
    seed: int = Field(default=0, description="Engine seed.")
    scoring_strategy: Literal["shared", "per_candidate"] = Field(
        default="shared",
        description="shared: one prompt, every candidate scored off its prefix cache; "
        "per_candidate: one request per candidate.",
    )
    batch_size: int = Field(default=64, ge=1, description="Items per engine call.")

    # The service.
    chunk_size: int = Field(default=256, ge=1, description="Items per Celery task.")
    max_chunk_attempts: int = Field(
        default=5, ge=1, description="Deliveries of one chunk before its items are failed."
    )
    visibility_timeout: int = Field(
        default=4 * 3600, description="Seconds Redis waits before redelivering an unacked task."
    )
    # Recovery is labelq's own, through the database: these timers, not the broker's, decide
    # how soon a crashed worker's chunk or a lost task is picked up again.
    lease_seconds: float = Field(
        default=60, gt=0, description="A claimed chunk's lease; renewed every third of it."
    )
    reconcile_interval: float = Field(
        default=15, gt=0, description="Seconds between reconciler sweeps."
    )
    stall_after: float = Field(
        default=120,
        gt=0,
        description="A pending chunk its queue went past this long ago, or a served queue "
        "with no claim for this long, has lost its tasks: they are sent again, at most once "
        "this period.",
    )
    job_expires_after: float = Field(
        default=86400,
        ge=0,
        description="A job not ended this many seconds after it was submitted ends `expired` "
        "with what it scored (a job may ask for its own, `expires_after`); 0: no deadline.",
    )
    upload_lease_seconds: float = Field(
        default=300,
        gt=0,
        description="A job being uploaded (or a retry being ingested) holds a lease, renewed as "
        "its items arrive; past it the job fails: upload interrupted.",
    )
    score_timeout: float = Field(
        default=5,
        gt=0,
        description="Seconds one engine call may take per item it scores (at least "
        "LABELQ_SCORE_TIMEOUT_FLOOR): past it the engine is taken as hung, killed and "
        "restarted, and the chunk handed back.",
    )
    score_timeout_floor: float = Field(
        default=120, gt=0, description="The least time an engine call is given."
    )
    engine_retry_backoff: float = Field(
        default=10, ge=0, description="First wait before a chunk whose engine failed is retried."
    )
    worker_heartbeat: float = Field(default=10, gt=0, description="Seconds between heartbeats.")
    preload: bool = Field(
        default=False,
        description="`labelq worker` loads its model before taking tasks (not with prefork).",
    )
    ready_file: Path | None = Field(
        default=None,
        description="`labelq worker` touches this file once its model is loaded and it takes "
        "tasks (a readiness probe: `test -f`); implies preload. Until then, and while it "
        "cannot load its model (it takes no tasks and tries again), the file's name with "
        "`.why` added says why.",
    )
    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="`labelq worker` serves its Prometheus metrics (chunk seconds, engine "
        "seconds, model load seconds and failures, ready) on this port; unset: not served.",
    )
    worker_stale_after: float = Field(
        default=60, gt=0, description="A worker unseen for this long is taken as gone."
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) webhooks may reach though they are not public, e.g. "
        '["10.20.0.0/16"]. Loopback, private, link-local and reserved addresses are refused '
        "otherwise.",
    )
    webhook_timeout: float = Field(
        default=10, gt=0, description="Seconds one webhook request may take in all."
    )
    webhook_retry_backoff: float = Field(
        default=10, ge=0, description="First wait before a failed webhook is tried again."
    )
    webhook_retry_window: float = Field(
        default=3 * 24 * 3600,
        gt=0,
        description="Seconds a webhook is retried after it was queued (3 days, as the major "
        "webhook senders do; waits double up to an hour) before it is marked failed; a failed "
        "one can be sent again with POST /v1/webhooks/{id}/redeliver.",
    )
    webhook_concurrency: int = Field(
        default=8, ge=1, description="Webhook requests a deliverer makes at once (a process)."
    )
    webhook_per_receiver: int = Field(
        default=2,
        ge=1,
        description="Webhook requests in flight to one receiver host at once, across "
        "deliverers: a slow receiver holds these, never the others' deliveries.",
    )
    retention: dict[str, Retention] = Field(
        default_factory=dict,
        description="Retention by tenant name (JSON; `*` for every other tenant): "
        '{"*": {"results_days": 30, "items_days": 365, "classifiers": {"chat": '
        '{"results_days": 7}}}}. Enforced by the reconciler in batches. Off by default.',
    )
    erase_batch: int = Field(
        default=1000,
        ge=1,
        description="Item rows an erasure (or retention) changes in one transaction.",
    )
    erase_per_sweep: int = Field(
        default=20_000,
        ge=1,
        description="Item rows erasures and retention change in one reconciler sweep at most; "
        "the rest go on in the next.",
    )
    backfill_batch: int = Field(
        default=2000,
        ge=1,
        description="Rows a data backfill (db.backfills) fills in one transaction.",
    )
    backfill_per_sweep: int = Field(
        default=20_000,
        ge=0,
        description="Rows the reconciler backfills in one sweep at most (rows a worker of the "
        "previous release wrote without the newer columns, or an upgrade's rest); 0: never.",
    )
    pipeline_connections: dict[str, Connection] = Field(
        default_factory=dict,
        description="Databases pipelines may use, by name (JSON): name -> URL, or {url, tenants, "
        "queries, write}. ${VAR} is read from the environment here only. Never labelq's own.",
    )
    pipeline_roots: dict[str, Root] = Field(
        default_factory=dict,
        description="Folders pipelines may use, by name (JSON): name -> path, or {path, tenants, "
        "write}.",
    )
    pipeline_run_lease: float = Field(
        default=120,
        gt=0,
        description="Seconds a pipeline run reading its source holds its lease, renewed every "
        "third of it as it reads: a run whose process died is failed once it runs out, and the "
        "next tick runs.",
    )
    pipeline_engine_retries: int = Field(
        default=3,
        ge=1,
        description="Runs that try a source row again after the engine failed on it (not the "
        "row's fault) before it is written to the sink as an error row and the run fails "
        "naming it.",
    )
    pipeline_failing_after: int = Field(
        default=3,
        ge=1,
        description="Failed runs in a row (since its last success) after which a pipeline is "
        "listed as failing in /readyz and counted in /metrics (the service stays ready).",
    )
    pipeline_connect_timeout: float = Field(
        default=10, gt=0, description="Seconds a pipeline's database connection may take."
    )
    pipeline_statement_timeout: float = Field(
        default=300, gt=0, description="Seconds one statement of a pipeline source or sink may run."
    )
    pipeline_lock_timeout: float = Field(
        default=10, gt=0, description="Seconds a pipeline's statement may wait for a lock."
    )
    beat_lock_seconds: float = Field(
        default=60, gt=0, description="The one beat's lock; another beat takes over after it."
    )
    # Limits on what the API accepts.
    max_body_bytes: int = Field(default=512 * 2**20, ge=1, description="Largest request body.")
    max_line_bytes: int = Field(default=2**20, ge=1, description="Largest JSONL line (item).")
    max_items_per_job: int = Field(default=1_000_000, ge=1, description="Most items in one job.")
    max_json_depth: int = Field(default=32, ge=2, description="Deepest nesting in one item.")
    max_fields_per_item: int = Field(default=256, ge=1, description="Most fields in one item.")
    max_spec_bytes: int = Field(
        default=1 << 20, ge=1, description="Largest classifier spec or pipeline body."
    )
    max_json_job_bytes: int = Field(
        default=16 << 20,
        ge=1,
        description="Largest JSON job body (a JSON body is held whole: send larger jobs as "
        "streamed JSONL).",
    )
    submissions_per_minute: int = Field(
        default=120, ge=1, description="Job submissions per API key (or client) per minute."
    )
    calibration_engine_mismatch: Literal["warn", "refuse"] = Field(
        default="warn",
        description="A calibration fitted on another engine's scores (another fingerprint: "
        "model files, dtype, versions, strategy): `warn` applies it and flags the job; "
        "`refuse` stores those results uncalibrated and flags the job.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log lines: `text` (date, time and zone, level, logger, message) or `json` "
        "(one object a line: time, level, logger, message, exception), the engine's too.",
    )
    drift_every: float = Field(
        default=900,
        gt=0,
        description="Seconds between two checks of a drift monitor (by the reconciler).",
    )
    engine_hour_price: float | None = Field(
        default=None,
        ge=0,
        description="What an hour of engine time costs (in your currency): jobs' `cost` and "
        "/metrics (`labelq_engine_cost_total`) then give engine time as money too.",
    )
    tenant_max_jobs: int | None = Field(
        default=200,
        ge=1,
        description="Unfinished jobs one tenant may have; a new job past it is refused (429, "
        "naming the limit and what is in flight). Empty: no limit.",
    )
    tenant_max_items: int | None = Field(
        default=5_000_000,
        ge=1,
        description="Items of one tenant's unfinished jobs not yet scored; a JSON job that "
        "would pass it, or any job once it is reached, is refused (429). Empty: no limit.",
    )
    tenant_admission: dict[str, Admission] = Field(
        default_factory=dict,
        description='Per-tenant limits over the two above (JSON): {"acme": {"jobs": 1000, '
        '"items": 50000000}}.',
    )
    key_cache_seconds: float = Field(
        default=5,
        ge=0,
        le=60,
        description="An API process trusts a key it checked for this long (0: checks every "
        "request); a key revoked through another process is refused within it.",
    )
    api_key: str | None = Field(default=None, description="Key the CLI's client sends.")
    no_auth: bool = Field(
        default=False,
        description="Serve without API keys (`labelq serve --no-auth`): loopback clients only, "
        "their Host header a loopback name. Without it, no key stored means no service.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses whose X-Forwarded-For the API believes (none: it believes none).",
    )
    metrics_classifier_labels: bool = Field(
        default=False,
        description="/metrics labels its per-classifier series with tenant, classifier, "
        "version and label names (off: one series over all of them).",
    )
    api_host: str = Field(default="127.0.0.1", description="Address `labelq serve` binds.")
    api_port: int = Field(default=8000, description="Port `labelq serve` binds.")
    api_access_log: bool = Field(
        default=False,
        description="`labelq serve` logs a line per request (the `labelq_http_requests` and "
        "`labelq_http_request_seconds` series count and time every request either way).",
    )
    api_db_threads: int = Field(
        default=16,
        ge=1,
        description="Threads an API process runs database work on, and its PostgreSQL "
        "connections (one each, held open); on PostgreSQL as many again for reads on its "
        "event loop.",
    )

    def admission(self, tenant: str) -> Admission:
        """The limits of `tenant`: its own where set, else the service's."""
        own = self.tenant_admission.get(tenant, Admission())
        return Admission(
            jobs=own.jobs or self.tenant_max_jobs, items=own.items or self.tenant_max_items
        )

    @model_validator(mode="after")
    def _own_database_is_no_connection(self) -> Settings:
        """labelq's own database is never a pipeline connection, nor inside a root."""
        from labelq.targets import resolve_env, same_database

        own = self.resolved_database_url()
        for name, connection in self.pipeline_connections.items():
            try:
                url = resolve_env(connection.url, name)
            except Exception:
                continue  # checked again when it is used
            if same_database(url, own):
                raise ValueError(
                    f"pipeline connection {name!r} is labelq's own database "
                    "(LABELQ_PIPELINE_CONNECTIONS): give pipelines a database of their own"
                )
        if own.startswith("sqlite"):
            file = Path(own.split("///", 1)[-1]).resolve()
            for name, root in self.pipeline_roots.items():
                try:
                    folder = Path(resolve_env(root.path, name)).resolve()
                except Exception:
                    continue
                if file.is_relative_to(folder):
                    raise ValueError(
                        f"pipeline root {name!r} holds labelq's own database "
                        "(LABELQ_PIPELINE_ROOTS): give pipelines a folder of their own"
                    )
        return self

    def webhook_policy(self) -> Policy:
        return Policy.of(self.webhook_allow, self.webhook_timeout)

    def pipeline_limits(self) -> Limits:
        return Limits(
            self.pipeline_connect_timeout,
            self.pipeline_statement_timeout,
            self.pipeline_lock_timeout,
        )

    def allowed_models(self) -> dict[str, str]:
        """Alias or model -> the model served (a model is its own alias)."""
        from labelq.backends.identity import canonical_model

        out: dict[str, str] = {}
        for entry in [*self.models, *([self.model] if self.model else [])]:
            alias, sep, path = entry.partition("=")
            if sep and alias and path:
                out[alias] = path
                out[path] = path
                out[canonical_model(path)] = path
            else:
                out[entry] = entry
                out[canonical_model(entry)] = entry
        return out

    def resolve_model(self, requested: str | None) -> str:
        """The model a classifier runs on: its own (by alias or name) if the service serves
        it, else the default; a `LabelqError` naming the field and the allowed models."""
        from labelq.errors import InputError

        allowed = self.allowed_models()
        if requested is None:
            if not self.model:
                raise InputError(
                    "the classifier names no model and the service has no default (LABELQ_MODEL)",
                    field="model",
                )
            return self.model
        from labelq.backends.identity import canonical_model

        if requested not in allowed and canonical_model(requested) in allowed:
            requested = canonical_model(requested)
        if requested not in allowed:
            shown = sorted({k for k, v in allowed.items() if k != v} | set(allowed.values()))
            raise InputError(
                f"model {requested!r} is not served here; allowed: {shown or 'none configured'}"
                " (LABELQ_MODELS)",
                field="model",
            )
        return allowed[requested]

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'labelq.db').resolve()}"
