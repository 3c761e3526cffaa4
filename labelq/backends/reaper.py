"""A sidecar that stops a process's engine processes when that process dies.

vLLM runs its engine in child processes (`VLLM::EngineCore`, `VLLM::Worker`) that live on,
reparented to init, when their parent is killed (SIGKILL, OOM, a default SIGTERM): about
2.5 GB each, one more per restart. `watch(pids)` starts this module as a small process that
polls its own parent; once the parent is gone it kills the watched processes and their
descendants, and exits. It exits as well once the watched processes are gone (a clean stop).

    python -m labelq.backends.reaper PARENT_PID PID[:CREATE_TIME] ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

POLL_SECONDS = 0.5


def watch(pids: Sequence[int]) -> subprocess.Popen[bytes] | None:
    """Start a reaper for `pids` (children of this process); None when there is nothing to
    watch or psutil is missing."""
    try:
        import psutil
    except ImportError:
        return None
    specs = []
    for pid in pids:
        try:
            specs.append(f"{pid}:{psutil.Process(pid).create_time()!r}")
        except psutil.NoSuchProcess:
            continue
    if not specs:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "labelq.backends.reaper", str(os.getpid()), *specs],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def new_children(before: set[int]) -> list[int]:
    """This process's descendants that were not in `before`."""
    try:
        import psutil
    except ImportError:
        return []

    return [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in before]


def children_now() -> set[int]:
    try:
        import psutil
    except ImportError:
        return set()
    return {p.pid for p in psutil.Process().children(recursive=True)}


def kill_tree(pids: Sequence[int]) -> None:
    """SIGKILL these processes (if they are still the ones started) and their descendants."""
    try:
        import psutil
    except ImportError:
        return
    processes: list[object] = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _kill_tree(processes)


def _kill_tree(processes: list[object]) -> None:
    import psutil

    victims: list[psutil.Process] = []
    for proc in processes:
        assert isinstance(proc, psutil.Process)
        try:
            victims += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for victim in victims:
        try:
            victim.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue


def main(argv: Sequence[str]) -> int:
    import psutil

    parent = int(argv[0])
    watched: list[psutil.Process] = []
    for spec in argv[1:]:
        pid, _, created = spec.partition(":")
        try:
            proc = psutil.Process(int(pid))
            # A reused pid is not ours to kill.
            if not created or abs(proc.create_time() - float(created)) < 1e-3:
                watched.append(proc)
        except psutil.NoSuchProcess:
            continue
    while watched:
        if os.getppid() != parent:
            _kill_tree(list(watched))
            return 0
        watched = [p for p in watched if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(POLL_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
