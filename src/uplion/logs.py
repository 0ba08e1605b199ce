"""How uplion's processes log: plain text on a terminal, a JSON object a line elsewhere.

``UPLION_LOG_FORMAT`` chooses: ``auto`` (the default: text when standard error is a terminal,
JSON when it is a file, a pipe or a container's log), ``json`` or ``text``. A JSON line has the
record's ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, its ``exception`` (the
traceback) if any, and the ``fields`` a record was given (``extra={"fields": {...}}``): the
request log's request id, durations and tokens, for instance. Text shows the message alone.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Literal, TextIO

LogFormat = Literal["auto", "json", "text"]
FIELDS = "fields"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    if log_format == "auto":
        return not stream.isatty()
    return log_format == "json"


def setup(level: str, log_format: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Log records of ``level`` and above to ``stream`` (standard error) in ``log_format``;
    nothing changes when logging was set up already (by a test, say)."""
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if wants_json(log_format, out)
                         else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
