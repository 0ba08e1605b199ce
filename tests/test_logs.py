"""``uplion.logs``: text on a terminal, a JSON object a line elsewhere, as
``UPLION_LOG_FORMAT`` may override; fields given to a record are keys of its JSON line."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from uplion import logs

SRC = str(Path(__file__).parent.parent / "src")
LOGGING = """
import logging, sys
from uplion import config, logs
settings = config.Settings()
logs.setup(settings.log_level, settings.log_format)
logging.getLogger("uplion.demo").info("served %s", "échos", extra={"fields": {"tokens": 3}})
try:
    raise RuntimeError("the cause")
except RuntimeError:
    logging.getLogger("uplion.demo").exception("it failed")
"""


def _run(stderr: int, log_format: str | None) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("UPLION_")}
    env["PYTHONPATH"] = SRC
    if log_format is not None:
        env["UPLION_LOG_FORMAT"] = log_format
    subprocess.run([sys.executable, "-c", LOGGING], stderr=stderr, env=env, timeout=60,
                   check=True)


def _on_terminal(log_format: str | None) -> list[str]:
    """The lines a process logs to a terminal (a pseudo-terminal here)."""
    controller, terminal = os.openpty()
    try:
        _run(terminal, log_format)
        os.close(terminal)
        printed = b""
        while chunk := _read(controller):
            printed += chunk
    finally:
        os.close(controller)
    return printed.decode().splitlines()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed: all was read
        return b""


def _to_file(tmp_path: Path, log_format: str | None) -> list[str]:
    path = tmp_path / "process.log"
    with path.open("wb") as out:
        _run(out.fileno(), log_format)
    return path.read_text().splitlines()


def test_a_terminal_gets_text(tmp_path: Path) -> None:
    lines = _on_terminal(None)
    assert lines[0].endswith(" INFO uplion.demo: served échos")
    assert lines[1].endswith(" ERROR uplion.demo: it failed")
    assert "RuntimeError: the cause" in lines[-1]


def test_a_file_or_pipe_gets_json_lines(tmp_path: Path) -> None:
    served, failed = (json.loads(line) for line in _to_file(tmp_path, None))
    assert served.keys() == {"time", "level", "logger", "message", "tokens"}
    assert (served["level"], served["logger"], served["message"], served["tokens"]) == (
        "info", "uplion.demo", "served échos", 3)
    assert served["time"].endswith("+00:00")
    assert failed["message"] == "it failed"
    assert failed["exception"].endswith("RuntimeError: the cause")


@pytest.mark.parametrize(("log_format", "json_lines"), [("json", True), ("text", False)])
def test_uplion_log_format_overrides(log_format: str, json_lines: bool, tmp_path: Path) -> None:
    first = (_on_terminal(log_format) if json_lines else _to_file(tmp_path, log_format))[0]
    assert first.startswith("{") is json_lines


def test_a_record_without_fields_has_the_four_keys() -> None:
    record = logging.LogRecord("uplion.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    assert json.loads(logs.JsonFormatter().format(record)).keys() == {
        "time", "level", "logger", "message"}
