"""Every setting labelq reads, in one place: environment variables with the `LABELQ_` prefix
(or a `.env` file). Read once at the edge (CLI, API app, worker) and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LABELQ_", env_file=".env", extra="ignore")

    # Where things live.
    home: Path = Field(default=Path("var"), description="Working folder of the embedded default.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset: a SQLite file under `home`."
    )
    broker_url: str = "redis://127.0.0.1:6379/0"

    # The model and its engine.
    model: str | None = Field(default=None, description="Default model path or hub id.")
    dtype: str = "auto"
    max_model_len: int | None = None
    memory_fraction: float = Field(
        default=0.3, gt=0, le=1, description="vLLM gpu_memory_utilization (host memory on CPU)."
    )
    kv_cache_gib: int = Field(default=2, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU.")
    # Small blocks let completions reuse more of their prompt from the prefix cache (only full
    # blocks are cached); the CPU backend wants multiples of 32. None: the engine's default.
    block_size: int | None = 32
    enforce_eager: bool = True
    in_process_engine: bool = Field(
        default=False,
        description="Run the engine core in the calling process (for daemonic pool children).",
    )
    seed: int = 0
    scoring_strategy: Literal["shared", "per_candidate"] = "shared"
    batch_size: int = Field(default=64, ge=1, description="Items per engine call.")

    # The service.
    chunk_size: int = Field(default=256, ge=1, description="Items per Celery task.")
    max_chunk_attempts: int = Field(
        default=5, ge=1, description="Deliveries of one chunk before its items are failed."
    )
    visibility_timeout: int = Field(
        default=4 * 3600, description="Seconds Redis waits before redelivering an unacked task."
    )
    api_key: str | None = Field(default=None, description="Key the CLI's client sends.")
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'labelq.db').resolve()}"
