"""Stopping a run cleanly: the first Ctrl-C / SIGTERM asks the loop to stop after the batch
in hand (it saves its state, then raises ``Interrupted``); a second one exits at once."""
from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C / SIGTERM after its state was saved."""


class StopRequest:
    """A flag the signal handler sets and the loop polls between batches (``should_stop()``)."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested


@contextmanager
def stop_on_signals(request: StopRequest):
    """While inside: the first SIGINT / SIGTERM sets ``request``, the second exits (status 130).
    The previous handlers come back on leaving. Outside the main thread (where Python cannot
    install handlers) it does nothing."""

    def handler(signum, frame):
        if request.requested:
            sys.exit(130)
        request.requested = True

    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
