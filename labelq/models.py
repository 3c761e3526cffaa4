"""The model cache workers read: `labelq model fetch SOURCE --into DIR` puts a model (a hub id
at a revision, or a local folder) into a folder of its own, whole or not at all, and records
where it came from and its exact revision in `labelq-model.json` beside its files. Workers then
name that folder (LABELQ_MODEL=/models/NAME) and never download: the engine fingerprint
includes the recorded revision, so a calibration knows which weights it was fitted on.

A fetch writes into a hidden folder beside the target and swaps it in by renames at the end; a
fetch cut off halfway leaves only that hidden folder, which the next fetch of the same target
removes first. A worker already running keeps the files it opened. Fetches of one folder take
turns (a lock file beside it), so pods sharing a cache volume fetch it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from labelq.errors import LabelqError

MANIFEST = "labelq-model.json"
# What a hub snapshot leaves out: other formats of the same weights, and the hub's own
# bookkeeping (a local_dir download writes `.cache/huggingface`).
HUB_IGNORE = ["original/*", "*.gguf", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.ot"]


class ModelManifest(BaseModel):
    source: str  # the hub id or the folder it came from
    revision: str  # the hub's commit, or `sha256:` of a folder's files
    fetched_at: datetime
    files: dict[str, int]  # name -> bytes


def read_manifest(folder: Path) -> ModelManifest | None:
    try:
        return ModelManifest.model_validate_json((folder / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None


def _members(folder: Path) -> list[tuple[str, Path]]:
    """A model folder's files, by their path in it, in order; its manifest aside."""
    found = sorted((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    return [(name, path) for name, path in found if name != MANIFEST]


def folder_revision(folder: Path) -> str:
    """A local folder's revision: a hash of its files' paths and bytes (the manifest aside)."""
    digest = hashlib.sha256()
    for name, path in _members(folder):
        digest.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _files(folder: Path) -> dict[str, int]:
    return {name: path.stat().st_size for name, path in _members(folder)}


def _leftovers(into: Path) -> list[Path]:
    return [*into.parent.glob(f".{into.name}.partial-*"), *into.parent.glob(f".{into.name}.old-*")]


def fetch(source: str, into: Path, revision: str | None = None) -> tuple[ModelManifest, bool]:
    """Put model `source` at `revision` (a hub id's branch, tag or commit, default its main
    branch; for a folder, the `sha256:` it must have) into `into`. Returns its manifest and
    whether anything was fetched (False: `into` already held that revision)."""
    if not into.name or into.name.startswith("."):
        raise LabelqError(f"--into {into}: name a folder for the model", field="into")
    into.parent.mkdir(parents=True, exist_ok=True)
    # One fetch of a folder at a time, across processes and pods sharing the cache: the next
    # waits, then finds the revision there.
    with open(into.parent / f".{into.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch(source, into, revision)


def _fetch(source: str, into: Path, revision: str | None) -> tuple[ModelManifest, bool]:
    for left in _leftovers(into):  # a fetch cut off before (this one holds the lock now)
        shutil.rmtree(left, ignore_errors=True)
    local = Path(source)
    if local.is_dir():
        found = folder_revision(local)
        if revision and revision != found:
            raise LabelqError(
                f"{source} has revision {found}, not the {revision} asked for", field="revision"
            )
    elif local.is_absolute() or source.startswith("."):
        raise LabelqError(f"{source}: no such folder", field="source")
    else:
        found = _hub_commit(source, revision)
    held = read_manifest(into)
    if held is not None and (held.source, held.revision) == (source, found):
        return held, False
    partial = into.parent / f".{into.name}.partial-{socket.gethostname()}-{os.getpid()}"
    if local.is_dir():
        # Every file its revision hashed: a manifest only at the top is the source's own.
        shutil.copytree(
            local, partial, ignore=lambda at, _: [MANIFEST] if Path(at) == local else []
        )
    else:
        _hub_download(source, found, partial)
    manifest = ModelManifest(
        source=source, revision=found, fetched_at=datetime.now(UTC), files=_files(partial)
    )
    (partial / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
    if into.exists():
        old = into.parent / f".{into.name}.old-{socket.gethostname()}-{os.getpid()}"
        into.rename(old)
        partial.rename(into)
        shutil.rmtree(old, ignore_errors=True)
    else:
        partial.rename(into)
    return manifest, True


def _hub_commit(repo: str, revision: str | None) -> str:
    """The commit `revision` of hub model `repo` names now."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        sha = HfApi().model_info(repo, revision=revision).sha
    except HfHubHTTPError as exc:
        raise LabelqError(f"{repo}@{revision or 'main'}: {exc}", field="source") from exc
    except OSError as exc:  # no network: offline mode, DNS
        raise LabelqError(f"{repo}: the hub cannot be reached ({exc})", field="source") from exc
    if not sha:
        raise LabelqError(f"{repo}@{revision or 'main'}: the hub names no commit", field="source")
    return sha


def _hub_download(repo: str, commit: str, folder: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo, revision=commit, local_dir=folder, ignore_patterns=HUB_IGNORE)
    shutil.rmtree(folder / ".cache", ignore_errors=True)
