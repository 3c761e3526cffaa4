"""Which precision to run the engine in when the user has not chosen one: the checkpoint's
own where the hardware computes it natively, never a lower one.

vLLM's `dtype="auto"` turns a float32 checkpoint into bfloat16 (or float16 on a GPU): a silent
downcast. On a CPU with native bfloat16 (AVX512-BF16), issue 28 measured it at 0.59x float32's
time but label log-probs up to 0.554 apart on a 30M model with 350-token prompts (3.1e-3 on a
2-layer one), and a demo's calibrated ECE moved from 0.031 to 0.052; where bfloat16 is emulated
(no AVX512-BF16 or AMX) it was about 5x slower than float32 as well. So a float32 checkpoint runs
float32 everywhere; a bfloat16 or float16 one runs as it is on a GPU, bfloat16 on a CPU that
computes it natively, else float32 (an upcast, exact). Lower precision is an opt-in
(`LABELQ_DTYPE=bfloat16`).
"""

from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def checkpoint_dtype(model: str) -> str | None:
    """The dtype a checkpoint's config.json names (a local folder, or a hub id in the local
    cache); None when it names none or cannot be read here."""
    import json

    path: Path | None = Path(model) / "config.json"
    if path is not None and not path.is_file():
        path = None
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model, "config.json")
            path = Path(found) if isinstance(found, str) else None
        except Exception:
            path = None
    if path is None:
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("torch_dtype") or config.get("dtype")
    return str(value).removeprefix("torch.") if value else None


def choose_dtype(
    requested: str, *, gpu: bool, flags: set[str], checkpoint: str | None = None
) -> tuple[str, str]:
    """(dtype for vLLM, why) for a requested dtype ("auto" unless the user chose) and the
    checkpoint's own (`checkpoint_dtype`; None: not known)."""
    if requested != "auto":
        return requested, "as configured (LABELQ_DTYPE)"
    if checkpoint == "float32":
        return "float32", "the checkpoint's own (float32): never a lower precision by default"
    if gpu:
        if checkpoint in ("bfloat16", "float16"):
            return checkpoint, f"the checkpoint's own ({checkpoint}) on a GPU"
        return "float32", "the checkpoint names no dtype: float32, never a lower one by default"
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if checkpoint == "bfloat16" and native:
        return "bfloat16", f"the checkpoint's own, computed natively here ({', '.join(native)})"
    if checkpoint in ("bfloat16", "float16"):
        return "float32", f"a {checkpoint} checkpoint on a CPU that does not compute it natively"
    return "float32", "the checkpoint names no dtype: float32, never a lower one by default"


def engine_dtype(requested: str, model: str) -> tuple[str, str]:
    """`choose_dtype` for this machine and checkpoint (imports torch: where the engine runs)."""
    import torch

    return choose_dtype(
        requested,
        gpu=torch.cuda.is_available(),
        flags=cpu_flags(),
        checkpoint=checkpoint_dtype(model) if requested == "auto" else None,
    )
