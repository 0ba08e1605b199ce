"""The fault suite's report: each fault says in one line what it did, and the lines are printed
at the end of the run (whatever ``-s`` or ``-r`` say), in a section "faults"."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from _pytest.terminal import TerminalReporter

_LINES = pytest.StashKey[list[str]]()

Report = Callable[[str], None]


def record(config: pytest.Config, fault: str, line: str) -> None:
    """Add ``fault: line`` to the summary."""
    config.stash.setdefault(_LINES, []).append(f"{fault}: {line}")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Report:
    """``report(line)``: one line about what this test's fault did, for the summary."""
    return lambda line: record(request.config, request.node.name, line)


def pytest_terminal_summary(terminalreporter: TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(_LINES, [])
    if lines:
        terminalreporter.section("faults")
        for line in lines:
            terminalreporter.write_line(line)
