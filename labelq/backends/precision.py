"""Which precision to run the engine in when the user has not chosen one.

vLLM's `dtype="auto"` turns a float32 checkpoint into bfloat16. Where bfloat16 is emulated (CPUs
without AVX512-BF16 or AMX), that measured about 5x slower than float32 here and less exact
(label log-probs 6.5e-3 off a float32 forward pass instead of 2e-6). So: on a GPU, the
checkpoint's own half precision (vLLM's "auto"); on a CPU that computes bfloat16 natively,
bfloat16; on any other CPU, float32.
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


def choose_dtype(requested: str, *, gpu: bool, flags: set[str]) -> tuple[str, str]:
    """(dtype for vLLM, why) for a requested dtype ("auto" unless the user chose)."""
    if requested != "auto":
        return requested, "as configured (LABELQ_DTYPE)"
    if gpu:
        return "auto", "the checkpoint's half precision on a GPU"
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return "bfloat16", f"this CPU computes bfloat16 natively ({', '.join(native)})"
    return "float32", "this CPU has no native bfloat16 (no AVX512-BF16 or AMX): float32 is faster"


def engine_dtype(requested: str) -> tuple[str, str]:
    """`choose_dtype` for this machine (imports torch: only where the engine runs)."""
    import torch

    return choose_dtype(requested, gpu=torch.cuda.is_available(), flags=cpu_flags())
