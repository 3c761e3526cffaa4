"""Session fixtures: a tiny random Llama model built on the spot, and one vLLM engine on it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelq.settings import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Engine settings for tests: float32 so the engine agrees with a plain transformers forward pass
# to 1e-4, a small context so truncation can be exercised, little memory.
TEST_MAX_MODEL_LEN = 512


def engine_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "dtype": "float32",
        "max_model_len": TEST_MAX_MODEL_LEN,
        "kv_cache_gib": 1,
        "memory_fraction": 0.3,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from labelq.demo_model import build_demo_model

    cache = os.environ.get("LABELQ_TEST_MODEL_DIR")
    path = Path(cache) if cache else tmp_path_factory.mktemp("models") / "tiny"
    return build_demo_model(path, "tiny")


@pytest.fixture(scope="session")
def vllm_backend(tiny_model: Path) -> Iterator[object]:
    from labelq.backends.vllm_backend import VllmBackend

    backend = VllmBackend(str(tiny_model), engine_settings())
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def per_candidate_backend(vllm_backend: object, tiny_model: Path) -> object:
    """The per-candidate strategy on the same engine (no second model load)."""
    from labelq.backends.vllm_backend import VllmBackend

    assert isinstance(vllm_backend, VllmBackend)
    backend = VllmBackend(str(tiny_model), vllm_backend.settings, strategy="per_candidate")
    backend._llm = vllm_backend.llm
    backend._tokenizer = vllm_backend.tokenizer
    return backend
