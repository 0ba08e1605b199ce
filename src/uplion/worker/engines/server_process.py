"""A server run as the worker's child: its own process group, its output kept and logged, its
exit noticed at once, and nothing of it left behind.

The child runs in a new session (so its process group is its own, and a terminal's signals do not
reach it). Its stdout and stderr go into one pipe that the event loop reads: each line is logged
(at ``info`` while the server starts, at ``debug`` once it serves, see ``quiet``) and the last
``TAIL_LINES`` are kept for the reason of a failure. A watcher waits for the child's exit, then
kills whatever the child left in its group and reads the rest of its output.

When the worker itself is killed outright (SIGKILL, the OOM killer), no ``stop`` runs. On Linux
the child is therefore started through ``_die_with_parent.py``, which asks the kernel for a
SIGTERM when the worker dies (``PR_SET_PDEATHSIG``) and then becomes the server with ``exec``.
The signal is tied to the thread that started the child: start servers from the event loop's
thread, which lives as long as the worker. Processes the server starts in groups of their own are
the server's to stop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_LINES = 50
"""How many of the child's last output lines are kept."""

_LINE_MAX = 1000
"""Longer lines are cut (a progress bar, a tensor dump)."""
_OUTPUT_GRACE_S = 2.0
"""How long the output may go on after the child exited (its last lines in flight)."""
_SHIM = Path(__file__).with_name("_die_with_parent.py")


class ServerProcess:
    """One child server. ``start`` it, watch ``exited``, ``stop`` it (idempotent)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        if not argv:
            raise ValueError("a server needs a command")
        self.argv = list(argv)
        self.env = dict(env)
        self.name = os.path.basename(self.argv[0])
        self.exited = asyncio.Event()
        """Set once the child exited, its group was killed and its output read to the end."""
        self._lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._level = logging.INFO
        self._process: asyncio.subprocess.Process | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        """Start the child; ``OSError`` if it cannot be (on Linux, a command that cannot be run
        is found later: the child exits with status 127 and says why in its output)."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        try:
            # A pipe of our own rather than asyncio's PIPE: asyncio's wait() waits for its pipes
            # to close too, and a grandchild holding them would hide the child's death.
            process = self._process = await asyncio.create_subprocess_exec(
                *_launcher(), *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=write_fd,
                stderr=write_fd, env=self.env, start_new_session=True,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        output = _Output(self._line)
        self._watcher = asyncio.create_task(
            self._watch(process, output), name=f"server-{process.pid}"
        )
        self._transport, _ = await loop.connect_read_pipe(
            lambda: output, os.fdopen(read_fd, "rb", buffering=0)
        )
        log.info("started %s (pid %d)", self.name, process.pid)

    def quiet(self) -> None:
        """Log the child's output at ``debug`` from now on (it serves; its chatter is routine)."""
        self._level = logging.DEBUG

    def tail(self) -> list[str]:
        """The child's last output lines, oldest first."""
        return list(self._lines)

    def describe_exit(self) -> str:
        """``vllm exited with status 3`` or ``vllm was killed by signal 9 (SIGKILL)``."""
        code = self.returncode
        if code is None:
            return f"{self.name} is running"
        if code < 0:
            try:
                signame = f" ({signal.Signals(-code).name})"
            except ValueError:
                signame = ""
            return f"{self.name} was killed by signal {-code}{signame}"
        return f"{self.name} exited with status {code}"

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM the child's group, SIGKILL it after ``timeout_s``; returns once it is gone."""
        process = self._process
        if process is None:
            return
        self._stopping = True
        if not self.exited.is_set():
            _signal_group(process.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                log.warning("%s (pid %d) did not stop in %g s after SIGTERM; killing it",
                            self.name, process.pid, timeout_s)
                _signal_group(process.pid, signal.SIGKILL)
            try:
                async with asyncio.timeout(timeout_s):
                    await self.exited.wait()
            except TimeoutError:
                log.error("%s (pid %d) did not exit after SIGKILL", self.name, process.pid)
        if self._transport is not None:
            self._transport.close()

    async def _watch(self, process: asyncio.subprocess.Process, output: _Output) -> None:
        await process.wait()
        # The server is gone: what it left in its group goes too, and closes the pipe with it.
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_OUTPUT_GRACE_S):
                await output.closed.wait()
        output.flush()
        if not self._stopping:
            log.warning("pid %d: %s", process.pid, self.describe_exit())
        self.exited.set()

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip()
        if not text:
            return
        if len(text) > _LINE_MAX:
            text = text[:_LINE_MAX] + " …"
        self._lines.append(text)
        log.log(self._level, "%s[%s]: %s", self.name, self.pid, text)


class _Output(asyncio.Protocol):
    """Splits the child's output into lines (ended by ``\\n`` or ``\\r``, as progress bars end
    theirs) and hands each to ``on_line``; ``closed`` is set when the pipe closes."""

    def __init__(self, on_line: Callable[[bytes], None]) -> None:
        self.on_line = on_line
        self.closed = asyncio.Event()
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._pending + data).splitlines(keepends=True)
        self._pending = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        if len(self._pending) > _LINE_MAX * 4:  # no end in sight: pass it on as a line
            lines.append(self._pending)
            self._pending = b""
        for line in lines:
            self.on_line(line)

    def eof_received(self) -> None:
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.flush()
        self.closed.set()

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, b""
            self.on_line(pending)


def _launcher() -> list[str]:
    """What runs before the command: on Linux, the shim that ties the child's life to ours."""
    if sys.platform != "linux":
        return []
    return [sys.executable, "-I", "-S", str(_SHIM), str(os.getpid())]


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
