"""Leave when the terminal goes away: an SSH drop, `tmux kill-server`, a closed window.

Normally the kernel sends SIGHUP and the process ends. But SIGHUP can be ignored (nohup, some
job-control setups), and then Textual's input thread reads EOF from the dead terminal forever:
the app spun at ~90% CPU for half an hour with nobody to see it. So the app also polls the
terminal, and a hangup exits the app; if shutdown stalls (a worker deep in a forward pass, or
writes to a terminal that is gone), the process is ended after a short grace period.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import termios
import threading
from collections.abc import Callable
from typing import Protocol

HANGUP_EXIT_CODE = 129  # 128 + SIGHUP, what a shell reports for a hung-up job
POLL_S = 1.0
GRACE_S = 3.0


class _Exitable(Protocol):
    """What the guard uses of a Textual App (only these calls, so a test can stand in for one)."""

    def exit(self, result: None = None, return_code: int = 0) -> None: ...

    def set_interval(self, interval: float, callback: Callable[[], object]) -> object: ...


def terminal_lost(fd: int) -> bool:
    """Whether ``fd`` was a terminal that has hung up (its attributes now fail with EIO)."""
    try:
        termios.tcgetattr(fd)
    except (termios.error, OSError):
        return True
    return False


class HangupGuard:
    """Exits ``app`` on SIGHUP or once its terminal is gone; call ``install`` from on_mount."""

    def __init__(self, app: _Exitable, fd: int | None = None) -> None:
        self.app = app
        self.fd = sys.__stdin__.fileno() if fd is None and sys.__stdin__ is not None else fd
        self.fired = False

    def install(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Watch the terminal (only when the app runs on one: not headless, not piped)."""
        if self.fd is None or not os.isatty(self.fd):
            return False
        # Installed even when SIGHUP was inherited as ignored: a TUI without a terminal has no use.
        loop.add_signal_handler(signal.SIGHUP, self.hangup)
        self.app.set_interval(POLL_S, self.check)
        return True

    def check(self) -> None:
        if self.fd is not None and terminal_lost(self.fd):
            self.hangup()

    def hangup(self) -> None:
        if self.fired:
            return
        self.fired = True
        # A daemon timer: it fires even while the interpreter waits on a busy worker thread.
        timer = threading.Timer(GRACE_S, os._exit, args=(HANGUP_EXIT_CODE,))
        timer.daemon = True
        timer.start()
        self.app.exit(return_code=HANGUP_EXIT_CODE)
