"""SIGINT (Ctrl-C) and SIGTERM during a search: stop cleanly, keep what finished.

The first signal is recorded. Where the driver may stop at once (waiting for the prepared
inputs, measuring test metrics) it raises ``SearchInterrupted`` there; inside a Ray Tune run or
while files are written it waits until that ends (``deferred``): a Tune run is stopped at its
next step by ``stop_tune``, which ends Tune's loop the way an error in a callback does (its
trial actors stopped, no "Tuner.restore" hint, which would not work with distforget's
trainable). A second signal stops at once. The search then keeps the finished trials, settles
the study and heads the report as interrupted (see ``distforget.distributed.tuner``), and the
command exits 130 (SIGINT) or 143 (SIGTERM), as shells expect of a process a signal ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by a signal; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class TuneStopped(Exception):
    """Raised in a Tune callback to end the Tune run (an Exception, so Tune cleans up)."""


class Interrupts:
    """Handlers for SIGINT and SIGTERM while the context is open (main thread only; elsewhere
    signals keep their handlers). Signals belong to the process: the open one is
    ``Interrupts.current``."""

    current: "Interrupts | None" = None

    def __init__(self, log: Callable[[str], None] = print):
        self.signum: int | None = None
        self.log = log
        self._deferred = 0
        self._old: dict[int, object] = {}
        self._old_tune_env: str | None = None

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            # Tune's own SIGINT handler would catch Ctrl-C first and print its resume hint.
            self._old_tune_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        Interrupts.current = self
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
        Interrupts.current = None

    def restore(self) -> None:
        """The handlers from before (a later signal acts as it did before the search)."""
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        if self._old:
            if self._old_tune_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._old_tune_env
        self._old = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise SearchInterrupted(self.signum)
        self.signum = signum
        self.log(f"{signal.Signals(signum).name} received: stopping the search after the "
                 "running step; finished trials are kept (send it again to stop at once)")
        if not self._deferred:
            raise SearchInterrupted(signum)

    def check(self) -> None:
        """Raise ``SearchInterrupted`` if a signal came."""
        if self.signum is not None:
            raise SearchInterrupted(self.signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal inside waits for the block's end (raised then)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        self.check()

    def stop_tune(self) -> None:
        """For a Tune callback's ``on_step_begin``: end the Tune run once a signal came."""
        if self.signum is not None:
            raise TuneStopped(signal.Signals(self.signum).name)


def stop_tune_on_signal() -> None:
    """``Interrupts.stop_tune`` of the open ``Interrupts``, if any (Tune pickles its callbacks,
    so they name this function rather than hold the handlers)."""
    if Interrupts.current is not None:
        Interrupts.current.stop_tune()
