"""The engine's default precision: the checkpoint's own where the hardware computes it
natively, never a lower one; and LABELQ_MODELS as JSON or plain paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelq.backends.precision import checkpoint_dtype, choose_dtype
from labelq.settings import Settings

BF16 = {"avx2", "avx512f", "avx512_bf16"}
AVX2 = {"avx2", "fma"}


@pytest.mark.parametrize(
    ("checkpoint", "gpu", "flags", "chosen"),
    [
        ("float32", False, BF16, "float32"),  # before: bfloat16, a silent downcast
        ("float32", False, AVX2, "float32"),
        ("float32", True, set(), "float32"),  # before: vLLM's auto, half precision
        ("bfloat16", False, BF16, "bfloat16"),
        ("bfloat16", False, AVX2, "float32"),  # emulated bfloat16: upcast, exact and faster
        ("bfloat16", True, set(), "bfloat16"),
        ("float16", True, set(), "float16"),
        ("float16", False, BF16, "float32"),  # not bfloat16: that would lose mantissa
        (None, False, BF16, "float32"),
        (None, True, set(), "float32"),
    ],
)
def test_auto_never_runs_lower_than_the_checkpoint(
    checkpoint: str | None, gpu: bool, flags: set[str], chosen: str
) -> None:
    dtype, why = choose_dtype("auto", gpu=gpu, flags=flags, checkpoint=checkpoint)
    assert dtype == chosen, why


def test_a_chosen_dtype_is_kept() -> None:
    assert choose_dtype("bfloat16", gpu=False, flags=AVX2, checkpoint="float32")[0] == "bfloat16"


def test_the_checkpoint_dtype_is_read_from_its_config(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"torch_dtype": "float32"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert checkpoint_dtype(str(tmp_path / "a")) == "float32"
    assert checkpoint_dtype(str(tmp_path / "b")) == "bfloat16"
    assert checkpoint_dtype(str(tmp_path / "none")) is None


def test_the_demo_model_is_float32_and_runs_so(tiny_model: Path) -> None:
    assert checkpoint_dtype(str(tiny_model)) == "float32"
    assert choose_dtype("auto", gpu=False, flags=BF16, checkpoint="float32")[0] == "float32"


def test_models_take_one_path_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, parsed in (
        ("/models/m", ["/models/m"]),  # before: "error parsing value for field models"
        ("/models/a, b=/models/b", ["/models/a", "b=/models/b"]),
        ('["/models/a", "b=/models/b"]', ["/models/a", "b=/models/b"]),
    ):
        monkeypatch.setenv("LABELQ_MODELS", raw)
        assert Settings().models == parsed
    monkeypatch.setenv("LABELQ_MODELS", "[not json")
    with pytest.raises(ValueError, match="JSON list"):
        Settings()
