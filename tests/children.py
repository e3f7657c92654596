"""Set-up for the CLI processes the tests start."""

from __future__ import annotations

import os
import signal


def one_cpu() -> None:
    """`preexec_fn` for a child process: pin it to one CPU (one llama.cpp thread, no spinning on a busy
    machine) and give it the default Ctrl-C disposition. A test run started in the background of a
    non-interactive shell (`cmd &`) passes SIGINT on as ignored, and Python then installs no
    KeyboardInterrupt handler: the Ctrl-C tests would be testing how pytest was launched."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
