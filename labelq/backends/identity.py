"""An engine's identity: what makes two workers' scores of the same prompt the same number.

`fingerprint` hashes the model id (with the revision `labelq model fetch` recorded), its
config, its tokenizer files and its weight files' names and sizes (not their bytes: a multi-GB
hash at every start would cost minutes), the dtype the engine runs in, the engine and labelq
versions and the scoring strategy. Two workers with one fingerprint compute the same scores (up
to the hardware's arithmetic); a calibration fitted on one fingerprint's scores is known to fit
only those.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def describe(model: str, **engine: Any) -> dict[str, Any]:
    """What the fingerprint is of: `engine` names the rest (dtype, versions, strategy)."""
    folder = Path(model)
    files: dict[str, Any] = {}
    if folder.is_dir():
        for name in ("config.json", *TOKENIZER_FILES):
            if (folder / name).is_file():
                files[name] = _digest(folder / name)
        for entry in sorted(folder.iterdir()):
            if entry.suffix in WEIGHT_SUFFIXES or entry.name.endswith(".index.json"):
                files[entry.name] = entry.stat().st_size
    described: dict[str, Any] = {"model": model.rstrip("/"), "files": files, **engine}
    if folder.is_dir():  # fetched by `labelq model fetch`: the exact revision it recorded
        from labelq.models import read_manifest

        if (manifest := read_manifest(folder)) is not None:
            described["revision"] = f"{manifest.source}@{manifest.revision}"
    return described


def fingerprint(description: dict[str, Any]) -> str:
    """A short stable hash of `describe`'s answer."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def canonical_model(model: str) -> str:
    """One spelling per model: a path without trailing or doubled slashes or `.` parts
    (`/models/m/` and `/models//m` are `/models/m`), a hub id as it is. Queue names and the
    models a service allows are read through it, so two spellings of one model share one
    queue; a spelling that is already canonical is unchanged (so are its queue's name)."""
    stripped = model.strip()
    return posixpath.normpath(stripped) if stripped else stripped
