"""deploy/smoke.sh: the images built with podman, the compose stack started from
deploy/compose.yaml, a job scored through its API, the stack stopped and started again on its
volumes (the job whole, a second one scored), and torn down with nothing left behind."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _left(kind: str) -> list[str]:
    """Containers, volumes or networks of a smoke run, by name."""
    listing = {
        "container": ["podman", "ps", "-a", "--format", "{{.Names}}"],
        "volume": ["podman", "volume", "ls", "--format", "{{.Name}}"],
        "network": ["podman", "network", "ls", "--format", "{{.Name}}"],
    }[kind]
    done = subprocess.run(listing, capture_output=True, text=True, check=True)
    return [name for name in done.stdout.split() if name.startswith("labelq-smoke")]


@pytest.mark.slow
def test_the_compose_stack_builds_starts_scores_restarts_and_tears_down() -> None:
    done = subprocess.run(
        ["bash", "deploy/smoke.sh"], cwd=ROOT, capture_output=True, text=True, timeout=2700
    )
    said = [line for line in done.stdout.splitlines() if line.startswith(("smoke:", "labelq-"))]
    print("\n" + "\n".join(said))
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert said[-1] == "smoke: passed"
    assert any(line.startswith("smoke: first item scored") for line in said)
    assert any(line.startswith("smoke: after the restart: job") for line in said)
    assert not _left("container") and not _left("volume") and not _left("network")
