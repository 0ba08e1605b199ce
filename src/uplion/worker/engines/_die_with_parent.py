"""Run a command that the kernel stops when the worker dies: ``python -I -S _die_with_parent.py
PARENT_PID COMMAND [ARG...]``.

Run as a script by ``server_process`` (it imports nothing of uplion): it asks Linux for a SIGTERM
when its parent dies (``PR_SET_PDEATHSIG``, which survives ``exec``), checks that the parent did
not die already, then replaces itself with the command, which keeps the process id.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_NOT_RUNNABLE = 127
"""The shell's status for a command that cannot be run."""


def main(argv: list[str]) -> int:
    parent, command = int(argv[1]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        print(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}",
              file=sys.stderr)
    if os.getppid() != parent:
        return 1  # the worker died before the request took effect: nothing to serve
    try:
        os.execvp(command[0], command)
    except OSError as error:
        print(f"cannot run {command[0]}: {error.strerror}", file=sys.stderr)
    return _NOT_RUNNABLE


if __name__ == "__main__":
    sys.exit(main(sys.argv))
