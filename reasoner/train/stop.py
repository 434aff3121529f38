"""Stopping a run cleanly: SIGINT / SIGTERM as a request to stop at the next step boundary (trainer, SFT, RM)."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager


class Interrupted(KeyboardInterrupt):
    """A stop asked for by SIGINT or SIGTERM: raised at a step boundary after saving, or out of a phase that
    changes no training state (an evaluation, the SFT warm start). ``reasoner train`` exits with 130."""


class GracefulStop:
    """SIGINT (Ctrl-C) and SIGTERM as a request to stop at the next step boundary; a second one aborts at once.

    The handlers only set ``requested``, so an optimizer step or a checkpoint is never cut in half. Inside
    ``immediate()`` the first signal raises ``Interrupted`` on the spot instead.
    """

    def __init__(self):
        self.requested = False
        self.immediate_ok = True  # False under torchrun: ranks must stop together, at a boundary
        self._immediate = False
        self._previous = {}
        if _main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                # A background job's ignored Ctrl-C stays ignored.
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt  # the second signal: abort now, save nothing
        self.requested = True
        # os.write, not print: a handler can run while the main code is inside a print
        os.write(2, f"\n[train] {signal.Signals(signum).name}: stopping at the next step boundary "
                    "(send it again to abort without saving)\n".encode())  # fmt: skip
        if self._immediate:
            raise Interrupted

    @contextmanager
    def immediate(self):
        """A phase that changes no training state: a signal inside it stops the phase at once."""
        if not self.immediate_ok:
            yield
            return
        if self.requested:
            raise Interrupted
        self._immediate = True
        try:
            yield
        finally:
            self._immediate = False

    def restore(self):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
