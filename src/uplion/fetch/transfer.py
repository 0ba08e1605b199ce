"""Moving bytes: streams written to files while hashed, files in parallel, progress in the logs."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKERS = 8
LOG_EVERY_S = 5.0


class Cancelled(Exception):
    """Another file of the same fetch failed: this one stops too."""


def _size(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.1f} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    return f"{count:.1f} TB"


class Progress:
    """Files and bytes done of one fetch, logged at most every ``LOG_EVERY_S`` seconds."""

    def __init__(self, shown: str, files: int, total_bytes: int | None) -> None:
        self.shown = shown
        self.files = files
        self.total_bytes = total_bytes
        self.files_done = 0
        self.bytes_done = 0
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._started = self._logged = time.monotonic()

    def add(self, count: int) -> None:
        if self.cancelled.is_set():
            raise Cancelled
        with self._lock:
            self.bytes_done += count
            now = time.monotonic()
            if now - self._logged < LOG_EVERY_S:
                return
            self._logged = now
        self._log()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def _log(self) -> None:
        total = f"/{_size(self.total_bytes)}" if self.total_bytes is not None else ""
        log.info("%s: %d/%d files, %s%s", self.shown, self.files_done, self.files,
                 _size(self.bytes_done), total)

    def finish(self) -> None:
        log.info("fetched %s: %d files, %s in %.1f s", self.shown, self.files_done,
                 _size(self.bytes_done), time.monotonic() - self._started)


def write_stream(chunks: Iterable[bytes], path: Path, progress: Progress) -> str:
    """Write ``chunks`` to ``path`` (replacing it); the SHA-256 of what was written."""
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            progress.add(len(chunk))
    return digest.hexdigest()


def parallel(jobs: Sequence[Callable[[], T]], progress: Progress) -> list[T]:
    """Run ``jobs`` on a thread pool, results in order; the first failure cancels the rest
    (queued ones never start, running ones stop at their next chunk) and is raised."""
    if not jobs:
        return []
    with ThreadPoolExecutor(min(WORKERS, len(jobs)), thread_name_prefix="fetch") as pool:
        futures = [pool.submit(job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            progress.cancelled.set()
            for future in futures:
                future.cancel()
            wait(futures)
            error = failed.exception()
            assert error is not None
            raise error
        return [future.result() for future in futures]
