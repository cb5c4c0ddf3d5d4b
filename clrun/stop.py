"""Stopping on SIGINT/SIGTERM: the running learners stop at their next step and write what they have, and a
sweep starts no further job. Free of torch, so the process that launches a sweep need not import it."""

from __future__ import annotations

import signal
import threading

_stop: dict[str, str | None] = {"signal": None}
_active_learners: list = []  # the learners training now: a signal asks each to stop


def stop_signal() -> str | None:
    """The signal (SIGINT/SIGTERM) that asked this process to stop, if one did."""
    return _stop["signal"]


def request_stop(signum: int, frame=None) -> None:
    """The handler of SIGINT/SIGTERM: the running learner stops at its next step and writes what it has; in a
    sweep, the jobs not yet started are not started. Repeated signals change nothing: no traceback, no lost
    summary."""
    _stop["signal"] = signal.Signals(signum).name
    for learner in _active_learners:
        learner.stop_requested = _stop["signal"]


def handle_stop_signals() -> None:
    """Install :func:`request_stop` for the whole process (a sweep: also between its jobs)."""
    if threading.current_thread() is threading.main_thread():  # signals can only be set there
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, request_stop)


class on_signals:
    """SIGINT/SIGTERM ask the learner to stop at the next step; the run then writes what it has."""

    def __init__(self, learner) -> None:
        self.learner = learner
        self.previous: dict = {}

    def __enter__(self):
        _active_learners.append(self.learner)
        if _stop["signal"]:
            self.learner.stop_requested = _stop["signal"]
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, request_stop)
        return self

    def __exit__(self, *exc) -> None:
        _active_learners.remove(self.learner)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
