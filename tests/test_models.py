"""`labelq model fetch` from a folder (the hub path needs the network; the same code after the
revision is known): whole or not at all, the revision recorded, nothing fetched twice, and a
fetch cut off halfway leaves nothing the next one keeps."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from labelq.backends.identity import describe, fingerprint
from labelq.cli import main
from labelq.errors import LabelqError
from labelq.models import MANIFEST, fetch, folder_revision, read_manifest


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    (folder / "sub" / "extra.txt").write_text("x")
    return folder


def test_a_folder_is_fetched_whole_with_its_revision_and_only_once(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    into = tmp_path / "models" / "tiny"
    manifest, fetched = fetch(str(source), into)
    assert fetched and manifest.revision == folder_revision(source)
    assert manifest.revision.startswith("sha256:") and len(manifest.revision) == 71
    assert manifest.files == {"config.json": 23, "model.safetensors": 1000, "sub/extra.txt": 1}
    assert (into / "sub" / "extra.txt").read_text() == "x"
    assert read_manifest(into) == manifest
    again, fetched = fetch(str(source), into)
    assert not fetched and again == manifest
    # The CLI says which, and exits 0.
    assert main(["model", "fetch", str(source), "--into", str(into)]) == 0
    assert "already here" in capsys.readouterr().out
    # A changed source is a new revision: fetched again, swapped in whole.
    (source / "model.safetensors").write_bytes(b"\1" * 1000)
    newer, fetched = fetch(str(source), into)
    assert fetched and newer.revision != manifest.revision
    assert (into / "model.safetensors").read_bytes() == b"\1" * 1000
    assert sorted(p.name for p in into.parent.iterdir()) == [".tiny.lock", "tiny"]


def test_a_fetch_cut_off_halfway_leaves_nothing_the_next_one_keeps(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    into = tmp_path / "models" / "tiny"
    fetch(str(source), into)
    before = read_manifest(into)
    (source / "model.safetensors").write_bytes(b"\2" * 1000)

    def dies(src: str, dst: str, **kwargs: object) -> None:
        Path(dst).mkdir()
        (Path(dst) / "config.json").write_text("{")  # half a copy, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copytree", dies)
    with pytest.raises(KeyboardInterrupt):
        fetch(str(source), into)
    monkeypatch.undo()
    # The model the workers read is the old one, whole; the half copy is hidden beside it.
    assert read_manifest(into) == before
    assert (into / "model.safetensors").read_bytes() == b"\0" * 1000
    (left,) = [p for p in into.parent.iterdir() if p.name not in ("tiny", ".tiny.lock")]
    assert left.name == f".tiny.partial-{socket.gethostname()}-{os.getpid()}"
    # The next fetch removes it and swaps the new revision in.
    manifest, fetched = fetch(str(source), into)
    assert fetched and manifest.revision == folder_revision(source)
    assert sorted(p.name for p in into.parent.iterdir()) == [".tiny.lock", "tiny"]


def test_bad_arguments_name_their_field(source: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelqError, match="not the sha256:abc asked for") as err:
        fetch(str(source), tmp_path / "m", revision="sha256:abc")
    assert err.value.field == "revision"
    with pytest.raises(LabelqError, match="no such folder") as err:
        fetch(str(tmp_path / "missing"), tmp_path / "m")
    assert err.value.field == "source"
    with pytest.raises(LabelqError) as err:
        fetch(str(source), tmp_path / ".hidden")
    assert err.value.field == "into"
    assert not (tmp_path / "m").exists()


def test_the_engine_fingerprint_carries_the_recorded_revision(source: Path, tmp_path: Path) -> None:
    into = tmp_path / "models" / "tiny"
    fetch(str(source), into)
    described = describe(str(into), dtype="float32")
    assert described["revision"] == f"{source}@{folder_revision(source)}"
    # Same files, another recorded revision: another engine.
    manifest = json.loads((into / MANIFEST).read_text())
    (into / MANIFEST).write_text(json.dumps({**manifest, "revision": "sha256:other"}))
    assert fingerprint(describe(str(into), dtype="float32")) != fingerprint(described)
    # A folder without a manifest is described as before (existing fingerprints unchanged).
    assert "revision" not in describe(str(source), dtype="float32")


def test_a_hub_model_is_fetched_at_its_commit_and_again_only_when_the_commit_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub path, with the hub's two calls stood in for (no network here): the branch is
    resolved to its commit, the snapshot is taken at that commit, and the hub's own
    bookkeeping is left out."""
    import huggingface_hub

    commits = {"main": "a" * 40}
    downloads: list[tuple[str, str]] = []

    class Info:
        def __init__(self, sha: str) -> None:
            self.sha = sha

    def model_info(self: object, repo: str, revision: str | None = None) -> Info:
        return Info(commits.get(revision or "main", revision or ""))

    def snapshot_download(
        repo_id: str, revision: str, local_dir: Path, ignore_patterns: list[str]
    ) -> str:
        downloads.append((repo_id, revision))
        assert "original/*" in ignore_patterns
        (local_dir / ".cache" / "huggingface").mkdir(parents=True)
        (local_dir / "config.json").write_text(json.dumps({"commit": revision}))
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    into = tmp_path / "models" / "qwen"
    manifest, fetched = fetch("org/model", into)
    assert fetched and manifest.revision == "a" * 40 and manifest.source == "org/model"
    assert downloads == [("org/model", "a" * 40)]  # the commit, never the moving branch
    size = len(json.dumps({"commit": "a" * 40}))
    assert not (into / ".cache").exists() and manifest.files == {"config.json": size}
    assert fetch("org/model", into) == (manifest, False)  # main has not moved
    commits["main"] = "b" * 40
    moved, fetched = fetch("org/model", into)
    assert fetched and moved.revision == "b" * 40 and len(downloads) == 2
    pinned, fetched = fetch("org/model", into, revision="c" * 40)  # a commit asked for
    assert fetched and pinned.revision == "c" * 40


def test_the_command_takes_its_defaults_from_the_settings(
    source: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An init container or a compose service runs `labelq model fetch` with no arguments."""
    into = tmp_path / "models" / "m"
    monkeypatch.setenv("LABELQ_MODEL", str(into))
    monkeypatch.delenv("LABELQ_MODEL_SOURCE", raising=False)
    assert main(["model", "fetch"]) != 0  # no source: refused, the field named
    assert "LABELQ_MODEL_SOURCE" in capsys.readouterr().err
    monkeypatch.setenv("LABELQ_MODEL_SOURCE", str(source))
    monkeypatch.setenv("LABELQ_MODEL_REVISION", "")  # empty, as a compose file passes it
    assert main(["model", "fetch"]) == 0
    assert read_manifest(into) is not None and "fetched in" in capsys.readouterr().out


def test_what_the_revision_hashes_is_what_is_copied(source: Path, tmp_path: Path) -> None:
    """Only the top-level manifest is labelq's: a file of that name deeper in the source is
    the model's, hashed, copied and listed."""
    (source / "sub" / MANIFEST).write_text("the model's own")
    manifest, _ = fetch(str(source), tmp_path / "models" / "m")
    assert (tmp_path / "models" / "m" / "sub" / MANIFEST).read_text() == "the model's own"
    assert f"sub/{MANIFEST}" in manifest.files and MANIFEST not in manifest.files
    assert folder_revision(tmp_path / "models" / "m") == manifest.revision
