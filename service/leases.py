"""Keeping a lease alive while work runs: a thread that renews it every `period` seconds
until the block ends, so a holder that is slow but alive keeps it, and one that died loses it
a lease later (then the reconciler or the next claimant takes over)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class KeepAlive:
    """Calls `renew()` every `period` seconds while the `with` block runs. `renew` returns
    False when the lease is lost (another holds it now) or let go: renewal stops (`renew` says
    why in the log). A renewal that raises (the database away) is tried again at the next
    period."""

    def __init__(self, renew: Callable[[], bool], period: float, what: str):
        self.renew, self.period, self.what = renew, period, what
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"labelq-{what}", daemon=True)

    def __enter__(self) -> KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.period):
            try:
                if not self.renew():
                    self.lost = True
                    return
            except Exception as exc:
                log.warning("%s: could not renew the lease: %s", self.what, exc)
