"""Stopping on request: SIGTERM (StopTrainingJob, Spot interruption) becomes a flag the loop reads, and
`Stopped` ends the job after its checkpoint. Low in the tree (no MXNet), so the epoch loop, the multi-host
supervisor and the entry point all import it from here."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("gluonseg.train")


class Stopped(Exception):
    """Raised after a SIGTERM checkpoint; the entry point exits without writing a failure."""


class StopRequest:
    """SIGTERM (StopTrainingJob, Spot interruption) sets a flag; the loop stops at the next batch."""

    logger = log
    message = "SIGTERM received: stopping at the next safe point and saving a checkpoint"

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def on_signal(self) -> None:
        """What SIGTERM does; subclasses that must agree with other workers first override it."""
        self.requested = True

    def __enter__(self) -> StopRequest:
        def handler(signum, frame):
            self.logger.warning(self.message)
            self.on_signal()

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests calling train() from a thread)
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
