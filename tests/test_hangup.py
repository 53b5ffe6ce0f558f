"""`horizon inspect` leaves when its terminal goes away (SIGHUP, or a dead terminal with SIGHUP ignored)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from horizon.tui.hangup import HANGUP_EXIT_CODE, terminal_lost


def test_terminal_lost_once_the_other_end_closes() -> None:
    master, slave = pty.openpty()
    try:
        assert not terminal_lost(slave)
        os.close(master)
        assert terminal_lost(slave)
    finally:
        os.close(slave)


def _start_inspector(ignore_sighup: bool) -> tuple[subprocess.Popen, int, list[bytes]]:
    """The inspector on tiny-llama in a fresh pseudo-terminal; returns once it has painted."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))

    def child_setup() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty is the controlling terminal, as in a real login
        if ignore_sighup:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup

    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "horizon.tui.cli.app", "inspect", "--model", "tiny-llama"],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=child_setup, env=env, close_fds=True,
    )
    os.close(slave)
    screen: list[bytes] = []

    def drain() -> None:  # keep reading, or the app would block writing to a full terminal
        while True:
            try:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    data = os.read(master, 65536)
                    if not data:
                        return
                    screen.append(data)
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 90
    while b"Tokens" not in b"".join(screen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the inspector did not paint: {b''.join(screen)[-500:]!r}")
        time.sleep(0.2)
    return proc, master, screen


@pytest.mark.slow
def test_inspector_exits_on_sighup() -> None:
    proc, master, _ = _start_inspector(ignore_sighup=False)
    try:
        proc.send_signal(signal.SIGHUP)
        # The app's handler exits it with 129 (the default action would kill it: returncode -1).
        assert proc.wait(timeout=20) == HANGUP_EXIT_CODE
    finally:
        proc.kill()
        os.close(master)


@pytest.mark.slow
def test_inspector_exits_when_its_terminal_dies_with_sighup_ignored() -> None:
    proc, master, _ = _start_inspector(ignore_sighup=True)
    try:
        os.close(master)  # the terminal goes away; SIGHUP is ignored, so only the app can notice
        assert proc.wait(timeout=20) == HANGUP_EXIT_CODE
    finally:
        proc.kill()
