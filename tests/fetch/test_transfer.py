"""Files in parallel: the first failure stops the others and is the one raised."""

from __future__ import annotations

import threading

import pytest

from uplion.fetch import transfer


def test_the_first_failure_stops_the_other_files() -> None:
    progress = transfer.Progress("s3://bucket/model", files=2, total_bytes=None)
    running, stopped = threading.Event(), threading.Event()

    def broken() -> int:
        assert running.wait(10)
        raise ValueError("object 1 is broken")

    def long_download() -> int:
        running.set()
        try:
            while True:
                progress.add(1)
        except transfer.Cancelled:
            stopped.set()
            raise

    with pytest.raises(ValueError, match="object 1 is broken"):
        transfer.parallel([broken, long_download], progress)
    assert stopped.is_set()


def test_results_come_in_order() -> None:
    progress = transfer.Progress("hf://org/repo", files=3, total_bytes=3)
    assert transfer.parallel([lambda: 1, lambda: 2, lambda: 3], progress) == [1, 2, 3]
