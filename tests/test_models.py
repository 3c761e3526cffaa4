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
